"""Canny edges (paper §7): OpenCV Canny with thresholds 100/200, reference at half resolution.

The rule, exactly: each bucket-size frame is converted to grey (`cv2.COLOR_RGB2GRAY`), `cv2.Canny(grey, 100, 200)`
runs at bucket size, and the edge map is then shrunk to the reference size (bucket ÷ 2) with `cv2.INTER_AREA`, so a
thin edge becomes a grey line rather than vanishing or aliasing. The reference is that grey image in 3 channels.
Detecting at bucket size and shrinking afterwards keeps the edges the model sees tied to the target's own detail.

`line_width` (`avctl prepare canny --line-width N`, default 1 = the paper's rule) dilates the edge map with an N×N
square at bucket size before the shrink. For small clips (e.g. 64 px with an 8× VAE) one-pixel edges do not survive
the VAE (none come back from a round trip), and the LoRA learns far more slowly; 3-px lines make them visible to it.
The width is part of the extractor's version (so datasets of different widths are not mixed) and is recorded in the
LoRA, whose `generate --from-video` then draws its controls the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

from avctl.errors import BadUsage
from avctl.metrics import CANNY_HIGH as HIGH_THRESHOLD  # one pair of thresholds, shared with eval's plain edges
from avctl.metrics import CANNY_LOW as LOW_THRESHOLD
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality

MAX_LINE_WIDTH = 15  # --line-width; wider lines swallow a 64-px frame


class CannyExtractor:
    """Weightless and deterministic."""

    backend = "opencv-canny"
    version = f"1 (OpenCV {cv2.__version__}, thresholds {LOW_THRESHOLD}/{HIGH_THRESHOLD}, INTER_AREA)"

    def __init__(self, line_width: int = 1) -> None:
        if isinstance(line_width, bool) or not isinstance(line_width, int) or not 1 <= line_width <= MAX_LINE_WIDTH:
            raise BadUsage(f"--line-width {line_width!r}: give a whole number of pixels from 1 to {MAX_LINE_WIDTH}")
        self.line_width = line_width
        if line_width != 1:  # the default keeps the class's version, so existing datasets stay compatible
            self.version = f"{type(self).version}, lines {line_width} px"
        self._kernel = np.ones((line_width, line_width), np.uint8)

    def __call__(self, clip: Clip) -> Control:
        height, width = clip.reference_size
        out = np.empty((len(clip.frames), height, width, 3), dtype=np.uint8)  # [F, h, w, 3]
        for i, frame in enumerate(clip.frames):
            edges = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), LOW_THRESHOLD, HIGH_THRESHOLD)
            if self.line_width > 1:
                edges = cv2.dilate(edges, self._kernel)
            if edges.shape != (height, width):
                edges = cv2.resize(edges, (width, height), interpolation=cv2.INTER_AREA)
            out[i] = edges[:, :, None]
        return Control(frames=out)


def edge_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for canny: edge_f1 against the control (at the control's size) and, with the source clip,
    edge_f1_plain against the source's plain 1-px edges at the output's own size (for controls drawn with thick
    lines); both get chance and skill (`avctl.skill`)."""
    from avctl.errors import AvctlError
    from avctl.metrics import (
        NO_SOURCE_CLIP,
        edge_f1,
        edge_f1_at_output,
        edge_f1_trimmed,
        plain_canny_edges,
        read_control_video,
    )
    from avctl.skill import Fidelity

    result = FidelityResult()
    output = inp.output.frames
    control, count = read_control_video(inp.control, output, result.compared, inp.modality.name)
    value = result.metrics["edge_f1"] = edge_f1(control[:count], output[:count])
    result.chance["edge_f1"] = Fidelity(edge_f1_trimmed, control, output, value, str(inp.control))
    if inp.source is None:
        result.missing["edge_f1_plain"] = inp.source_missing or NO_SOURCE_CLIP
        return result
    try:
        plain = plain_canny_edges(inp.source, output[:count])  # [F, H, W] at the output's size
        value = result.metrics["edge_f1_plain"] = edge_f1_at_output(plain, output[:count])
        result.compared.update(plain_width=plain.shape[2], plain_height=plain.shape[1])
        result.chance["edge_f1_plain"] = Fidelity(edge_f1_at_output, plain, output[:count], value, str(inp.source))
    except AvctlError as exc:
        result.missing["edge_f1_plain"] = str(exc)
    return result


CANNY = Modality(
    name="canny",
    category="spatial",
    description="Follow the edge map (Canny) of a video.",
    streams=("video",),
    targets=("V.SA",),
    rank=32,
    steps=3000,
    train_samples=2000,
    downscale=2,
    context="noised",
    extractor=CannyExtractor,
    extractor_note="OpenCV Canny 100/200 at bucket size, INTER_AREA-shrunk to the half-size reference (weightless)",
    fidelity=edge_fidelity,
    fidelity_note="edge_f1 (output's Canny edges vs the control's, 2 px tolerance); with the source clip also "
    "edge_f1_plain (vs the source's 1-px edges at the output's size)",
)
