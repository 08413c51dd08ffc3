"""Camera from an image (paper §7): the input image, unprojected with monocular depth and rendered along the target
camera trajectory ("canonical grid", disocclusions #66FF00), is the reference on a 4× downscaled canvas; the image
also conditions the first frame. No extractor ships yet (it needs camera and depth estimation)."""

from __future__ import annotations

from modalities.base import Modality

CAMERA_IMAGE = Modality(
    name="camera-image",
    category="camera",
    description="Animate an image along a camera trajectory (image-to-video camera control).",
    streams=("video",),
    targets=("V.SA", "V.CA", "V.FF"),
    rank=32,
    steps=3000,
    train_samples=3000,
    downscale=4,
    context="noised",
    first_frame_image=True,
    extractor=None,
    extractor_note="planned: first frame rendered along the estimated camera path "
    "(SpatialTrackerV2 + depth, or an OpenCV homography chain), holes #66FF00",
)
