"""Pose (paper §7): DWPose skeletons of real videos as the reference, at half resolution.

No extractor ships yet (DWPose needs ONNX weights; mediapipe is not a dependency), so `prepare` refuses with a clear
message.
"""

from __future__ import annotations

from modalities.base import Modality

POSE = Modality(
    name="pose",
    category="spatial",
    description="Follow the body pose (OpenPose-style skeletons) of a video.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=3000,
    train_samples=2000,
    downscale=2,
    context="noised",
    extractor=None,
    extractor_note="planned: DWPose skeletons via rtmlib + ONNX weights, drawn OpenPose-18 style",
)
