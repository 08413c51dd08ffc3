"""Depth (paper §7): per-frame depth of real videos as the reference, at half resolution.

No extractor ships yet: no installable package bundles depth weights and weightless proxies are not depth
(shared/reference/extractors.md §2.1), so `prepare` refuses with a clear message instead of guessing.
"""

from __future__ import annotations

from modalities.base import Modality

DEPTH = Modality(
    name="depth",
    category="spatial",
    description="Follow the depth map of a video.",
    streams=("video",),
    targets=("V.SA",),
    rank=128,
    steps=3000,
    train_samples=2000,
    downscale=2,
    context="noised",
    extractor=None,
    extractor_note="planned: Depth-Anything-V2 / Video-Depth-Anything via transformers (hub "
    "weights), normalised over the whole clip",
)
