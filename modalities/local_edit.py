"""Local edit (paper §7): paired videos with and without an object and its side effects (ROSE); the reference is
the original video, the target the edited one. At inference a first frame edited by an image editor is propagated
without an explicit mask. Data are pairs, not extracted: `avctl prepare local-edit pairs.jsonl` with one
{"source": original, "target": edited, "caption"?} per line (or a source,target[,caption] CSV)."""

from __future__ import annotations

from avctl.modalities.base import EvalInput, FidelityResult, Modality


def reference_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for local-edit: reference_psnr and reference_ssim of the output (resized to the reference's
    size) against the original video, over the whole frame. The edit's region is not on record, so these say how
    much of the original is kept, which an edit confined to one object leaves high."""
    import numpy as np

    from avctl.metrics import masked_psnr, masked_ssim, read_control_video, resize_frames

    result = FidelityResult()
    control, count = read_control_video(inp.control, inp.output.frames, result.compared, inp.modality.name)
    height, width = control.shape[1:3]
    output = resize_frames(inp.output.frames[:count], width, height)
    keep_all = np.zeros((height, width), np.uint8)
    result.metrics["reference_psnr"] = masked_psnr(control[:count], output, keep_all)
    result.metrics["reference_ssim"] = masked_ssim(control[:count], output, keep_all)
    return result


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
    fidelity=reference_fidelity,
    fidelity_note="reference_psnr and reference_ssim: output vs the original video, whole frame",
)
