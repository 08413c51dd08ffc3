"""Who-is-talking's offline fidelity metric for `avctl eval`."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from avctl.audio import VAD_SAMPLE_RATE, VoiceActivity, build_vad, voice_activity
from avctl.errors import BadInput, MissingWeights
from avctl.modalities.base import EvalInput, FidelityResult
from avctl.modalities.who_is_talking.faces import mouth_boxes
from avctl.modalities.who_is_talking.render import control_boxes, speaking_in_control
from avctl.modalities.who_is_talking.speakers import _smooth


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


def who_is_talking_fidelity(inp: EvalInput) -> FidelityResult:
    """The `Modality.fidelity` hook: `evaluate_who_is_talking` on the control and the generated video."""
    found, missing = evaluate_who_is_talking(inp.control, inp.video)
    return FidelityResult(metrics=dict(found), missing=missing)
