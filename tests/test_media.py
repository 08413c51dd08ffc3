"""avctl.media: decode/encode round trips, audio downmix and resampling, errors, buckets."""

from __future__ import annotations

import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from avctl.errors import BadInput, BadUsage
from avctl.media import (
    Bucket,
    fit_to_bucket,
    fps_fraction,
    probe,
    read_audio,
    read_video,
    write_video,
    write_wav,
)
from tests.conftest import SAMPLE_RATE, synthetic_frames, tone, write_synthetic_clip


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp." in p.name)


def test_video_and_audio_round_trip(tmp_path: Path) -> None:
    frames = synthetic_frames(24, 160, 120)
    audio = tone(2.0)
    write_video(tmp_path / "clip.mp4", frames, 12.0, audio=audio, sample_rate=SAMPLE_RATE)

    clip = read_video(tmp_path / "clip.mp4")
    assert clip.frames.shape == (24, 120, 160, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(12.0)
    assert clip.duration == pytest.approx(2.0)
    assert np.abs(clip.frames.astype(int) - frames).mean() < 4  # lossy, but the picture survives

    decoded = read_audio(tmp_path / "clip.mp4", SAMPLE_RATE)
    assert decoded is not None and decoded.shape[0] == 2 and decoded.dtype == np.float32
    assert abs(decoded.shape[1] / SAMPLE_RATE - 2.0) <= 0.040
    # Left and right keep their own tones (330 Hz and 440 Hz): each correlates with its source channel.
    middle = slice(SAMPLE_RATE // 2, SAMPLE_RATE + SAMPLE_RATE // 2)
    for channel in range(2):
        own = np.corrcoef(decoded[channel, middle], audio[channel, middle])[0, 1]
        other = np.corrcoef(decoded[channel, middle], audio[1 - channel, middle])[0, 1]
        assert own > 0.9 > abs(other) + 0.5
    assert _leftovers(tmp_path) == []


def test_max_frames_and_lossless(tmp_path: Path) -> None:
    frames = synthetic_frames(20, 64, 48, seed=3)
    write_video(tmp_path / "ref.mp4", frames, 10.0, lossless=True)
    clip = read_video(tmp_path / "ref.mp4", max_frames=7)
    assert clip.frames.shape == (7, 48, 64, 3)
    # Lossless H.264 in yuv444p: only the RGB↔YUV rounding remains.
    assert np.abs(clip.frames.astype(int) - frames[:7]).max() <= 2


def test_surround_audio_is_downmixed_and_resampled(tmp_path: Path) -> None:
    path = write_synthetic_clip(tmp_path / "surround.mp4", frames=18, width=64, height=48, fps=12.0, audio_channels=6)
    assert probe(path).sample_rate == SAMPLE_RATE
    stereo = read_audio(path, 16_000, channels=2)
    assert stereo is not None and stereo.shape[0] == 2
    assert abs(stereo.shape[1] / 16_000 - 1.5) <= 0.040
    assert np.sqrt(np.mean(stereo**2)) > 0.05  # the downmix carries the tones, not silence
    mono = read_audio(path, 16_000, channels=1)
    assert mono is not None and mono.shape[0] == 1


def test_no_audio_stream_gives_none(tmp_path: Path) -> None:
    path = write_synthetic_clip(tmp_path / "silent.mp4", frames=6, width=32, height=32, audio_channels=None)
    assert read_audio(path, 16_000) is None


def test_ntsc_rate_is_kept_exact(tmp_path: Path) -> None:
    ntsc = 30000 / 1001
    assert fps_fraction(29.97) == fps_fraction(ntsc) == Fraction(30000, 1001)
    assert fps_fraction(12.0) == 12
    write_video(tmp_path / "ntsc.mp4", synthetic_frames(10, 32, 32), ntsc)
    assert read_video(tmp_path / "ntsc.mp4").fps == pytest.approx(ntsc, abs=1e-9)


def test_variable_frame_rate_is_resampled_to_constant(tmp_path: Path) -> None:
    # 2 s of 20 fps frames whose brightness is their time in 1/100 s; every other frame of the first second is
    # dropped without retiming, so the file is variable-rate (10 fps, then 20 fps; ffmpeg reports 15 on average).
    rate, count = 20, 40
    frames = np.repeat(np.round(np.arange(count) / rate * 100).astype(np.uint8), 48 * 64 * 3).reshape(count, 48, 64, 3)
    path = tmp_path / "vfr.mp4"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48",
           "-r", str(rate), "-i", "-", "-vf", r"select='gte(n\,20)+not(mod(n\,2))'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)

    clip = read_video(path)
    assert clip.fps == pytest.approx(15.0)
    assert abs(len(clip.frames) - 2.0 * clip.fps) <= 2
    shown = clip.frames[: round(2.0 * clip.fps), 0, 0, 0].astype(float)  # past 2 s the last frame repeats
    expected = np.arange(len(shown)) / clip.fps * 100
    # Each output frame shows the source frame of its own time (±one source frame in the sparse part).
    assert np.abs(shown - expected).max() <= 12


def test_probe_reports_structured_stream_facts(tmp_path: Path) -> None:
    ntsc = Fraction(30000, 1001)
    write_video(tmp_path / "ntsc.mp4", synthetic_frames(10, 64, 48), float(ntsc), audio=tone(10 / float(ntsc)),
                sample_rate=SAMPLE_RATE)
    info = probe(tmp_path / "ntsc.mp4")
    assert (info.rate, info.fps, info.frames, info.width, info.height) == (ntsc, float(ntsc), 10, 64, 48)
    assert (info.has_audio, info.sample_rate, info.channels) == (True, SAMPLE_RATE, 2)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration == pytest.approx(10 / float(ntsc), abs=0.05)
    write_wav(tmp_path / "mono.wav", tone(0.5, 1), 22_050)
    sound = probe(tmp_path / "mono.wav")
    assert (sound.has_video, sound.rate, sound.channels, sound.sample_rate) == (False, 0, 1, 22_050)


def test_reading_starts_no_ffmpeg_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_synthetic_clip(tmp_path / "clip.mp4", frames=12, width=64, height=48)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert probe(path).has_audio
    assert read_video(path).frames.shape == (12, 48, 64, 3)
    audio = read_audio(path, 16_000, channels=1)
    assert audio is not None and audio.shape == (1, 16_000)  # 1 s exactly: the AAC frame padding is cut


def test_rotation_metadata_turns_the_frames_upright(tmp_path: Path) -> None:
    frames = synthetic_frames(6, 64, 48, seed=5)
    write_video(tmp_path / "flat.mp4", frames, 12.0, lossless=True)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i",
           str(tmp_path / "flat.mp4"), "-c", "copy", str(tmp_path / "turned.mp4")]
    subprocess.run(cmd, check=True)
    flat, turned = read_video(tmp_path / "flat.mp4").frames, read_video(tmp_path / "turned.mp4").frames
    assert turned.shape == (6, 64, 48, 3)
    assert np.array_equal(turned, np.rot90(flat, 1, axes=(1, 2)))  # 90° counter-clockwise, as ffmpeg shows it


def test_a_truncated_file_gives_what_it_holds_and_mono_upmixes(tmp_path: Path) -> None:
    path = write_synthetic_clip(tmp_path / "whole.mp4", frames=24, width=64, height=48, fps=12.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])  # index first (faststart), data cut short
    assert 0 < len(read_video(cut).frames) < 24
    audio = read_audio(cut, 16_000)
    assert audio is not None and 0 < audio.shape[1] < 2 * 16_000
    write_wav(tmp_path / "mono.wav", tone(0.5, 1), SAMPLE_RATE)
    stereo = read_audio(tmp_path / "mono.wav", SAMPLE_RATE, channels=2)
    assert stereo is not None and stereo.shape == (2, SAMPLE_RATE // 2) and np.array_equal(stereo[0], stereo[1])


def test_bad_files_raise_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all")
    write_wav(tmp_path / "sound.wav", tone(0.5, 1), SAMPLE_RATE)
    truncated = write_synthetic_clip(tmp_path / "cut.mp4", frames=12, width=64, height=48)
    truncated.write_bytes(truncated.read_bytes()[:300])
    cases = {
        "missing.mp4": "no such file",
        "empty.mp4": "empty file",
        "text.mp4": "not a video",
        "sound.wav": "no video stream",
        "cut.mp4": "",
        ".": "folder",
    }
    for name, reason in cases.items():
        with pytest.raises(BadInput) as info:
            read_video(tmp_path / name)
        message = str(info.value)
        assert str(tmp_path / name) in message and reason in message and "\n" not in message
    with pytest.raises(BadInput, match="empty file"):
        read_audio(tmp_path / "empty.mp4", 16_000)


def test_write_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="even width and height"):
        write_video(tmp_path / "odd.mp4", np.zeros((3, 33, 32, 3), np.uint8), 10.0)
    write_video(tmp_path / "odd_lossless.mp4", np.zeros((3, 33, 31, 3), np.uint8), 10.0, lossless=True)
    assert read_video(tmp_path / "odd_lossless.mp4").frames.shape == (3, 33, 31, 3)
    with pytest.raises(BadInput, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((3, 32, 32, 3), np.float32), 10.0)
    assert not (tmp_path / "odd.mp4").exists() and _leftovers(tmp_path) == []


def test_write_wav_is_16_bit_pcm(tmp_path: Path) -> None:
    audio = tone(0.25, 2, 16_000)
    write_wav(tmp_path / "a.wav", audio, 16_000)
    with wave.open(str(tmp_path / "a.wav")) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16_000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2).T
    assert np.abs(pcm / 32767 - audio).max() < 1e-4
    assert _leftovers(tmp_path) == []


def test_fit_to_bucket_resizes_keeping_aspect_then_crops_the_centre() -> None:
    wide = np.zeros((2, 100, 300, 3), np.uint8)
    wide[:, :, :100] = (255, 0, 0)  # left third red, middle green, right blue
    wide[:, :, 100:200] = (0, 255, 0)
    wide[:, :, 200:] = (0, 0, 255)
    out = fit_to_bucket(wide, 64, 64)  # shrink to 64 high (192 wide), keep the middle 64 columns
    assert out.shape == (2, 64, 64, 3)
    assert np.all(out[:, :, 2:-2, 1] == 255) and np.all(out[:, :, 2:-2, [0, 2]] == 0)

    small = synthetic_frames(1, 40, 30)
    up = fit_to_bucket(small, 128, 64)  # enlarge to 128×96, crop 16 rows top and bottom
    assert up.shape == (1, 64, 128, 3)
    assert np.abs(up[0, 32, 64].astype(int) - small[0, 15, 20]).max() < 40  # the centre stays the centre


def test_bucket_parse_check_and_reference_size() -> None:
    bucket = Bucket.parse("768x448x89")
    assert (bucket.width, bucket.height, bucket.frames) == (768, 448, 89) and str(bucket) == "768x448x89"
    assert bucket.check(32, 8, 2) is bucket
    assert bucket.reference_size(2) == (224, 384)
    for text in ("768x448", "axbxc", "0x64x9"):
        with pytest.raises(BadUsage):
            Bucket.parse(text)
    with pytest.raises(BadUsage) as info:
        Bucket(770, 448, 90).check(32, 8, 2)
    message = str(info.value)
    assert "width 770" in message and "768 or 832" in message and "89 or 97" in message and "height" not in message
    with pytest.raises(BadUsage, match=r"height 448 is not a multiple of 128.*384 or 512"):
        bucket.check(32, 8, 4)
