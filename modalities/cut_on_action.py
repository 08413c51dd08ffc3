"""Cut-on-action (paper §7): continue a video after a cut to another viewpoint. Trained on multi-camera synthetic
pairs (MultiCamVideo), then on pairs the LoRA itself generated with growing viewpoint changes. Data are pairs, not
extracted: `avctl prepare cut-on-action pairs.jsonl`, source = the first camera (reference), target = the second."""

from __future__ import annotations

from modalities.base import Modality

CUT_ON_ACTION = Modality(
    name="cut-on-action",
    category="camera",
    description="Cut to another camera angle on the same action.",
    streams=("video",),
    targets=("V.SA", "V.FF"),
    rank=128,
    steps=15000,
    train_samples=15000,
    downscale=1,
    context="noised",
    paired=True,
    extractor=None,
    extractor_note="paired media: two synchronized cameras of one scene (MultiCamVideo, then self-generated "
    "pairs), from a pairs manifest (.jsonl / .csv): source camera → reference, other camera → target",
)
