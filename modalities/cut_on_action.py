"""Cut-on-action (paper §7): continue a video after a cut to another viewpoint. Trained on multi-camera synthetic
pairs (MultiCamVideo: reference = one camera, target = another with a large viewpoint change), then bootstrapped:
the LoRA generates pairs with progressively larger viewpoint changes (yaw up to 135°), they are added to the data
and the LoRA is retrained (15K samples in total). Reference canvas 1×.

Data are pairs, not extracted: `avctl prepare cut-on-action pairs.jsonl`, source = the first camera (reference),
target = the second. The bootstrapping loop is a command sequence over `avctl generate` / `prepare` / `train`:
examples/cut_on_action_bootstrap.sh.
"""

from __future__ import annotations

from avctl.modalities.base import EvalInput, FidelityResult, Modality


def scene_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for cut-on-action: colour_histogram_correlation of the output and the reference (the other
    camera): the same scene seen from elsewhere keeps its colours, wherever they move in the frame."""
    from avctl.metrics import colour_histogram_correlation, read_control_video

    result = FidelityResult()
    control, count = read_control_video(inp.control, inp.output.frames, result.compared, inp.modality.name)
    result.metrics["colour_histogram_correlation"] = colour_histogram_correlation(control[:count],
                                                                                  inp.output.frames[:count])
    return result


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
    fidelity=scene_fidelity,
    fidelity_note="colour_histogram_correlation: hue-saturation histograms of output and reference (same scene)",
)
