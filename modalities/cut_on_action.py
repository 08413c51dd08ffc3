"""Cut-on-action (paper §7): continue a video after a cut to another viewpoint. Trained on multi-camera synthetic
pairs (MultiCamVideo: reference = one camera, target = another with a large viewpoint change), then bootstrapped:
the LoRA generates pairs with progressively larger viewpoint changes (yaw up to 135°), they are added to the data
and the LoRA is retrained (15K samples in total). Reference canvas 1×.

Data are pairs, not extracted: `avctl prepare cut-on-action pairs.jsonl`, source = the first camera (reference),
target = the second. The bootstrapping loop is a command sequence over `avctl generate` / `prepare` / `train`:
examples/cut_on_action_bootstrap.sh.
"""

from __future__ import annotations

from avctl.modalities.base import Modality

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
    extractor_note="paired media from a pairs manifest (.jsonl / .csv): two synchronized cameras of one scene with a "
    "large viewpoint change (MultiCamVideo), source camera → reference, other camera → target; then self-generated "
    "wider-angle pairs (examples/cut_on_action_bootstrap.sh)",
)
