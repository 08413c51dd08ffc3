"""Speed and memory of one denoising step on the canvas, per reference downscale and strength, in one run.

All timed settings run in one process on the same model and inputs so their ratios are fair; each latency is the
median of N steps after a warm-up. Memory: CUDA's max-allocated bytes on a GPU; on CPU each setting runs again in a
subprocess whose peak RSS is read (the in-process allocator does not give per-setting peaks). The analytic size of
the strength bias is reported next to it: avctl's per-key bias is B·T_keys floats per row block, where diffusers'
`video_self_attention_mask` path materialises B·heads·T² (the mask is repeated per head).

The predicted ratio uses cost ∝ T·(6d + T) per block (projections + FF ∝ T·d, attention ∝ T²), with d the video
width: a first-order model for comparing the measured ratios against.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from avctl.canvas import Canvas, Reference, build_stream
from avctl.errors import BadUsage
from avctl.forward import predict
from avctl.strength import clear_strength


@dataclass
class BenchRow:
    path: str  # "avctl" or "diffusers"
    downscale: int | None  # None = no reference (baseline)
    strength: float | None
    tokens: int  # video target + reference tokens
    target_tokens: int
    reference_tokens: int
    step_latency_s: float
    peak_mem_bytes: int | None
    bias_bytes: int  # analytic size of the strength bias/mask per attention call
    ratio_vs_noref: float = 1.0
    ratio_vs_1x: float | None = None
    predicted_ratio_vs_1x: float | None = None


def _inputs(backbone: Any, width: int, height: int, frames: int, seed: int = 0) -> dict[str, Any]:
    tr = backbone.transformer
    grid = backbone.latent_grid(frames, height, width)
    g = torch.Generator().manual_seed(seed)
    device, dtype = backbone.device, next(tr.parameters()).dtype
    audio_frames = backbone.audio_latent_frames(frames / 24.0)
    mel = tr.config.audio_in_channels // backbone.audio_latent_channels
    text = backbone.encode_text(["a benchmark prompt"])
    return {
        "grid": grid,
        "video": torch.randn(1, tr.config.in_channels, *grid, generator=g).to(device, dtype),
        "audio": torch.randn(1, backbone.audio_latent_channels, audio_frames, mel, generator=g).to(device, dtype),
        "text": (text.video, text.audio, text.mask),
        "generator": g,
    }


def _reference(backbone: Any, inputs: dict[str, Any], s: int) -> torch.Tensor:
    f, h, w = inputs["grid"]
    if h % s or w % s:
        raise BadUsage(f"the latent grid {h}×{w} is not divisible by downscale {s}; use a larger --width/--height")
    tr = backbone.transformer
    return torch.randn(1, tr.config.in_channels, f, h // s, w // s, generator=inputs["generator"]).to(
        inputs["video"].device, inputs["video"].dtype
    )


def _canvas(backbone: Any, inputs: dict[str, Any], ref: torch.Tensor | None, s: int, strength: float) -> Canvas:
    tr = backbone.transformer
    sigma = torch.tensor([0.5], device=inputs["video"].device)
    refs = [Reference(ref, s, strength)] if ref is not None else []
    return Canvas(
        build_stream("video", tr, inputs["video"], sigma, refs),
        build_stream("audio", tr, inputs["audio"], sigma),
    )


def _time(fn: Any, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _diffusers_step(backbone: Any, canvas: Canvas, inputs: dict[str, Any], strength: float) -> Any:
    """The same step the way diffusers' LTX2InContextPipeline runs it: its own block mask through
    `video_self_attention_mask` (None at strength 1.0), on the stock attention path."""
    from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2InContextPipeline

    tr = backbone.transformer
    v, a = canvas.video, canvas.audio
    mask = None
    if strength < 1.0:
        n_ref = v.tokens.shape[1] - v.target_len
        cross = torch.full((1, n_ref), strength, device=v.tokens.device)
        mask = LTX2InContextPipeline._build_video_self_attention_mask(
            num_noisy_tokens=v.target_len, num_prefix_tokens=v.target_len, extras_cross_masks=[cross],
            device=v.tokens.device,
        )
    tv, ta, tm = inputs["text"]
    dtype = next(tr.parameters()).dtype

    def step() -> None:
        clear_strength(tr)  # the stock attention path, as the pipeline runs it
        with torch.no_grad():
            tr(hidden_states=v.tokens.to(dtype), audio_hidden_states=a.tokens.to(dtype),
               encoder_hidden_states=tv.to(dtype), audio_encoder_hidden_states=ta.to(dtype),
               timestep=v.timestep, audio_timestep=a.timestep, encoder_attention_mask=tm,
               audio_encoder_attention_mask=tm, video_coords=v.coords, audio_coords=a.coords,
               video_self_attention_mask=mask, return_dict=False)

    return step


def _bias_bytes(canvas: Canvas, strength: float, heads: int, path: str) -> int:
    v = canvas.video
    t = v.tokens.shape[1]
    if strength == 1.0 or t == v.target_len:
        return 0
    if path == "diffusers":
        return heads * t * t * 4  # (B=1) per-head copy of the [T, T] mask, fp32 here
    return t * 4 * 2  # one [1, 1, 1, T] bias for the target rows + the reference rows' (none at "target")


def run_bench(
    backbone: Any,
    downscales: list[int],
    strengths: list[float],
    width: int,
    height: int,
    frames: int,
    steps: int = 5,
    warmup: int = 2,
    measure_memory: bool = True,
    compare_diffusers: bool = True,
    progress: Any = None,
) -> list[BenchRow]:
    for w in strengths:
        if not 0 <= w <= 1:
            raise BadUsage(f"strength {w} outside [0, 1]")
    tr = backbone.transformer.eval()
    device = backbone.device
    inputs = _inputs(backbone, width, height, frames)
    heads = tr.config.num_attention_heads
    d = heads * tr.config.attention_head_dim
    settings: list[tuple[str, int | None, float | None]] = [("avctl", None, None)]
    settings += [("avctl", s, w) for s in downscales for w in strengths]
    if compare_diffusers:
        settings += [("diffusers", 1, w) for w in (1.0, 0.0)]
    rows: list[BenchRow] = []
    for i, (path, s, w) in enumerate(settings):
        ref = _reference(backbone, inputs, s) if s is not None else None
        canvas = _canvas(backbone, inputs, ref, s or 1, 1.0 if w is None else w)
        if path == "avctl":
            def step(c: Canvas = canvas) -> None:
                with torch.no_grad():
                    predict(tr, c, *inputs["text"])
        else:
            step = _diffusers_step(backbone, canvas, inputs, w)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        latency = _time(step, steps, warmup, device)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        v = canvas.video
        rows.append(BenchRow(path, s, w, v.tokens.shape[1], v.target_len, v.tokens.shape[1] - v.target_len,
                             latency, peak, _bias_bytes(canvas, 1.0 if w is None else w, heads, path)))
        if progress:
            progress(i + 1, len(settings))
    if measure_memory and device.type != "cuda":
        for row in rows:
            row.peak_mem_bytes = _subprocess_peak_rss(backbone.model_id, row, width, height, frames)
    base = rows[0]
    for row in rows:
        row.ratio_vs_noref = row.step_latency_s / base.step_latency_s
        one_x = next((r for r in rows if r.path == row.path and r.downscale == 1 and r.strength == row.strength),
                     None)
        if one_x is not None and row.downscale is not None:
            row.ratio_vs_1x = row.step_latency_s / one_x.step_latency_s
            row.predicted_ratio_vs_1x = (row.tokens * (6 * d + row.tokens)) / (one_x.tokens * (6 * d + one_x.tokens))
    return rows


def _subprocess_peak_rss(model: str, row: BenchRow, width: int, height: int, frames: int) -> int | None:
    spec = json.dumps({"model": model, "path": row.path, "downscale": row.downscale, "strength": row.strength,
                       "width": width, "height": height, "frames": frames, "threads": torch.get_num_threads()})
    proc = subprocess.run([sys.executable, "-m", "avctl.bench", spec], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return None
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_bytes"])


def _one_setting(spec: dict[str, Any]) -> dict[str, int]:
    """Run one setting's step once in this (fresh) process and report its peak RSS."""
    import resource

    from avctl.backbone import load_backbone

    torch.set_num_threads(spec["threads"])
    bb = load_backbone(spec["model"], device="cpu")
    inputs = _inputs(bb, spec["width"], spec["height"], spec["frames"])
    s, w = spec["downscale"], spec["strength"]
    ref = _reference(bb, inputs, s) if s is not None else None
    canvas = _canvas(bb, inputs, ref, s or 1, 1.0 if w is None else w)
    if spec["path"] == "diffusers":
        _diffusers_step(bb, canvas, inputs, w)()
    else:
        with torch.no_grad():
            predict(bb.transformer, canvas, *inputs["text"])
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def rows_to_dicts(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def plot(rows: list[BenchRow], path: Any, title: str) -> None:
    """Latency vs downscale, one line per strength (avctl path); the no-reference baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    strengths = sorted({r.strength for r in rows if r.path == "avctl" and r.strength is not None}, reverse=True)
    for w in strengths:
        pts = sorted((r.downscale, r.step_latency_s * 1000) for r in rows if r.path == "avctl" and r.strength == w)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"strength {w:g}")
    base = next(r for r in rows if r.downscale is None)
    ax.axhline(base.step_latency_s * 1000, linestyle="--", color="grey", label="no reference")
    ax.set_xlabel("reference downscale s")
    ax.set_ylabel("step latency (ms, median)")
    ax.set_xticks(sorted({r.downscale for r in rows if r.downscale}))
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    print(json.dumps(_one_setting(json.loads(sys.argv[1]))))
