"""Local edit (paper §7): paired videos with and without an object and its side effects (ROSE); the reference is
the original video, the target the edited one. At inference a first frame edited by an image editor is propagated
without an explicit mask. Data are pairs, not extracted: `avctl prepare local-edit pairs.jsonl` with one
{"source": original, "target": edited, "caption"?} per line (or a source,target[,caption] CSV)."""

from __future__ import annotations

from avctl.modalities.base import Modality

LOCAL_EDIT = Modality(
    name="local-edit",
    category="editing",
    description="Propagate a local edit (remove or change an object, with its side effects) through a video.",
    streams=("video",),
    targets=("V.SA", "V.FF"),
    rank=128,
    steps=1000,
    train_samples=1000,
    downscale=1,
    context="noised",
    paired=True,
    extractor=None,
    extractor_note="paired media: (original → reference, edited → target) videos such as the ROSE dataset, from a "
    "pairs manifest (.jsonl / .csv)",
)
