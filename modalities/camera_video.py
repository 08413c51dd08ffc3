"""Camera from a video (paper §7): synchronized multi-camera videos (SynCamVideo); one camera's video re-rendered
from another camera's trajectory as a dynamic point cloud (holes #66FF00) is the reference, the second camera's
real video the target. Data are pairs, not extracted: `avctl prepare camera-video pairs.jsonl` takes the source as
given (already re-rendered, holes #66FF00); re-rendering a camera into another's trajectory is the camera issue's."""

from __future__ import annotations

from modalities.base import Modality

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
    extractor_note="paired media: an already re-rendered source camera (reference) and a second camera (target), "
    "e.g. SynCamVideo, from a pairs manifest (.jsonl / .csv); plain pairs, no re-rendering here (planned with the "
    "camera issue)",
)
