"""Who is talking (paper §7): the reference is coloured face boxes on black — a face's box is filled with its
speaker colour while that person speaks and grey while silent, any number of speakers — paired with the mixed audio
of all speakers, which is the target audio. The only LoRA that trains every module, and it trains both streams;
at generation the audio can instead be given and kept as clean context (`avctl.sample.generate(keep_audio=...)`).

The rule, exactly (this package: `faces`, `speakers`, `render`, `metric`; voice activity from `avctl.audio`):
* faces: OpenCV's frontal-face Haar cascade on every 2nd bucket-size frame, linked into tracks by box overlap
  (IoU ≥ 0.3, gaps filled by interpolation, tracks seen in under 25 % of the clip dropped); speaker i is the i-th
  track from the left, coloured red, green, blue, yellow, magenta, cyan, orange, purple, then golden-ratio hues;
* voice activity: Silero VAD (its own ONNX file, bundled in the `silero-vad` wheel, run with onnxruntime) on the
  mixed track, per video frame; `--backend energy` swaps in a plain loudness detector (any sound counts);
* who speaks, from the mixed track alone (`assign_from_mix`): a face is a candidate speaker when its mouth-region
  motion (frame differences in the lower middle of its box) correlates positively with the voice activity over the
  clip; in each voiced frame the candidate whose mouth moves most (motion averaged over 0.3 s, relative to its own
  level while nobody speaks) is the speaker; turns shorter than 0.2 s are merged into their neighbour. Overlapping
  speech goes to one face at a time;
* a speakers file (`load_speakers`: JSON Lines of per-speaker segments or per-speaker audio tracks, keyed by clip;
  `--speakers FILE`, or a sidecar `<video name>.speakers.jsonl` next to a video, where "clip" may be left out)
  replaces that guess with the user's own timing; each speaker label is matched to the face whose mouth motion
  correlates best with that speaker's activity.
A clip with no face is skipped; a clip with no audio stream (and no speakers entry) is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avctl.audio import VAD_BACKENDS, VoiceActivity, build_vad, require_audio, voice_activity
from avctl.errors import BadInput, BadUsage
from avctl.modalities.base import ALL_GROUPS, Clip, Control, Modality
from avctl.modalities.who_is_talking.faces import (
    FaceDetector,
    HaarFaces,
    detect_and_track,
    iou,
    mouth_boxes,
    mouth_motion,
    track_faces,
)
from avctl.modalities.who_is_talking.metric import (
    evaluate_who_is_talking,
    mouth_box_agreement,
    vad_box_agreement,
    who_is_talking_fidelity,
)
from avctl.modalities.who_is_talking.render import (
    GREY,
    PALETTE,
    coloured_fraction,
    control_boxes,
    render_who_is_talking,
    speaker_colour,
    speaking_in_control,
)
from avctl.modalities.who_is_talking.speakers import (
    SpeakerInfo,
    assign_from_mix,
    assign_from_speakers,
    load_speakers,
    speaker_activity,
    talking_score,
)

__all__ = [
    "GREY", "PALETTE", "WHO_IS_TALKING", "FaceDetector", "HaarFaces", "SpeakerInfo", "WhoIsTalkingExtractor",
    "assign_from_mix", "assign_from_speakers", "coloured_fraction", "control_boxes", "detect_and_track",
    "evaluate_who_is_talking", "iou", "load_speakers", "mouth_box_agreement", "mouth_boxes", "mouth_motion",
    "render_who_is_talking", "speaker_activity", "speaker_colour", "speaking_in_control", "talking_score",
    "track_faces", "vad_box_agreement", "who_is_talking_extractor", "who_is_talking_fidelity",
]

DETECT_EVERY = 2  # Haar on every 2nd frame; tracking interpolates between


class WhoIsTalkingExtractor:
    def __init__(self, faces: FaceDetector, vad: VoiceActivity, speakers: dict[str, SpeakerInfo] | None = None,
                 detect_every: int = DETECT_EVERY) -> None:
        self.faces = faces
        self.vad = vad
        self.speakers = speakers or {}
        self.detect_every = detect_every
        self.backend = f"{faces.backend}+{vad.backend}"
        self.version = (f"1 ({getattr(faces, 'version', faces.backend)}; VAD {getattr(vad, 'version', vad.backend)}"
                        f"; mouth-motion correlation; speakers file: {'yes' if self.speakers else 'no'})")

    def schedule(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [N, F, 4] at bucket size, speaking [N, F]) for a clip."""
        frames = len(clip.frames)
        boxes = detect_and_track(clip.frames, self.faces, every=self.detect_every)
        if len(boxes) == 0:
            raise BadInput(f"{clip.key}: no face found ({self.faces.backend}); who-is-talking needs visible faces")
        motion = mouth_motion(clip.frames, boxes)
        info = self.speakers.get(clip.key)
        source = getattr(clip, "source", None)
        if info is None and source is not None:  # a per-clip sidecar next to the video: <name>.speakers.jsonl
            sidecar = Path(source).with_suffix(".speakers.jsonl")
            if sidecar.is_file():
                info = load_speakers(sidecar, default_clip=clip.key).get(clip.key)
        if info is not None:
            _, activity = speaker_activity(info, clip.fps, frames, self.vad)
            speaking, _ = assign_from_speakers(activity, motion)
        else:
            audio = require_audio(clip.audio, "who-is-talking (voice activity on the mixed track)", clip.key)
            assert clip.sample_rate is not None
            speaking = assign_from_mix(voice_activity(self.vad, audio, clip.sample_rate, clip.fps, frames), motion,
                                       clip.fps)
        return boxes, speaking

    def __call__(self, clip: Clip) -> Control:
        boxes, speaking = self.schedule(clip)
        return Control(frames=render_who_is_talking(boxes, speaking, clip.frames.shape[1:3], clip.reference_size))


def who_is_talking_extractor(weights: Path | None = None, backend: str | None = None,
                             speakers: Path | None = None) -> WhoIsTalkingExtractor:
    """The factory `avctl prepare` calls: `backend` picks the voice-activity detector ("silero", default, or
    "energy"); `speakers` is an optional speakers file (`load_speakers`)."""
    if weights is not None:
        raise BadUsage("--weights: who-is-talking's face cascade and Silero VAD ship inside their packages; drop it")
    if backend is not None and backend not in VAD_BACKENDS:
        raise BadUsage(f"unknown who-is-talking backend {backend!r}; known: {', '.join(VAD_BACKENDS)} "
                       "(the voice-activity detector)")
    return WhoIsTalkingExtractor(HaarFaces(), build_vad(backend),
                                 load_speakers(Path(speakers)) if speakers is not None else None)


who_is_talking_extractor.backend = "silero"  # type: ignore[attr-defined]

WHO_IS_TALKING = Modality(
    name="who-is-talking",
    category="audio-visual",
    description="Make the right person talk: face boxes coloured by who speaks, with the speech audio.",
    streams=("video",),
    loss_streams=("video", "audio"),
    targets=ALL_GROUPS,
    rank=128,
    steps=3500,
    train_samples=500,
    downscale=1,
    context="noised",
    extractor=who_is_talking_extractor,
    extractor_note="face boxes (OpenCV Haar, tracked) on black, filled with the speaker's colour while that face "
    "speaks and grey when silent; voice activity by Silero VAD (ONNX, bundled) on the mixed track, assigned to the "
    "face whose mouth motion follows it (or a --speakers file); the mixed audio is the target",
    fidelity=who_is_talking_fidelity,
    fidelity_note="vad_box_accuracy and vad_box_f1 (voice activity in the output's audio vs a coloured box in the "
    "control) and mouth_box_agreement (the speaking box's mouth moves more than a silent one's)",
)
