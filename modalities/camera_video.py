"""Camera from a video (paper §7): synchronized multi-camera videos (SynCamVideo); one camera's video re-rendered
from another camera's trajectory as a dynamic point cloud (holes #66FF00) is the reference, the second camera's
real video the target; reference canvas 1×.

Data are pairs, not extracted: `avctl prepare camera-video pairs.jsonl` takes each row's source as the reference
as given, so the source must already be the re-rendered camera. `avctl.camera.rerender_video(frames, depth,
trajectory, size, source_fov, source_frames)` makes it: each source frame with its own depth is re-rendered from
the target camera of the same output frame (world = the source camera; `source_frames` retimes, e.g. a freeze or
slow motion by rendering another timestamp). At generation, `avctl.camera.camera_video_control` does the same for
a `--from-video` source along a preset or trajectory JSON, with per-frame depth from the depth modality's model.
"""

from __future__ import annotations

from avctl.modalities.base import Modality
from avctl.modalities.camera_image import CAMERA_FIDELITY_NOTE, camera_fidelity

CAMERA_VIDEO = Modality(
    name="camera-video",
    category="camera",
    description="Re-render a video along a new camera trajectory.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=10000,
    train_samples=10000,
    downscale=1,
    context="noised",
    paired=True,
    extractor=None,
    extractor_note="paired media from a pairs manifest (.jsonl / .csv): reference = one camera re-rendered from the "
    "other camera's trajectory (per-frame depth point cloud, holes #66FF00; avctl.camera.rerender_video makes it, "
    "optionally retimed), target = the other camera's real video (e.g. SynCamVideo)",
    fidelity=camera_fidelity,
    fidelity_note=CAMERA_FIDELITY_NOTE,
    camera_from="video",
)
