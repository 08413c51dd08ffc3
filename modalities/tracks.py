"""Sparse tracks (paper §7): point tracks drawn as coloured dots on black, reference at half resolution.
No extractor ships yet."""

from __future__ import annotations

from modalities.base import Modality

TRACKS = Modality(
    name="tracks",
    category="motion",
    description="Move content along sparse point tracks.",
    streams=("video",),
    targets=("V.SA", "V.CA", "V.FF"),
    rank=32,
    steps=5000,
    train_samples=5000,
    downscale=2,
    context="noised",
    extractor=None,
    extractor_note="planned: point tracks (AllTracker, or OpenCV LK with a forward-backward "
    "check) drawn as coloured dots with trails on black",
)
