"""Speed and memory of one denoising step on the canvas, per reference downscale and strength, in one run.

All timed settings run in one process on the same model and inputs so their ratios are fair; each latency is the
median of N steps after a warm-up. Memory: CUDA's max-allocated bytes on a GPU; on CPU each setting runs once in a
forked child process whose peak RSS is read (the in-process allocator gives no per-setting peaks; a fork shares the
loaded model instead of re-importing and re-loading it). The analytic size of the strength bias is reported next to
it: avctl's per-key bias is B·T_keys floats per row block, where diffusers' `video_self_attention_mask` path
materialises B·heads·T² (the mask is repeated per head).

The predicted ratio is a FLOP count of the real forward: one `predict` call per setting, run on a `meta`-device
copy of the transformer (same config, no weights, no arithmetic: instant at any size) under torch's
`FlopCounterMode`, which counts every matmul the model issues — the projections, feed-forwards and AdaLN
linears per token, the self-attention's T² products, the cross-attentions to the text and the other modality.
Element-wise work (norms, RoPE, softmax, GELU, casts) is not counted: on `tiny` it and per-op overhead are most of
the step; at real widths it is mostly per token, so it scales as the FLOPs do (docs/bench.md has a CPU profile).
The plain token-count ratio is reported beside the prediction for contrast.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from avctl.canvas import LAYOUTS, Canvas, Reference, StreamCanvas, build_stream
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
    predicted_flops: int = 0  # matmul FLOPs of one predict call at this setting (`forward_flops`)
    ratio_vs_noref: float = 1.0
    ratio_vs_1x: float | None = None
    predicted_ratio_vs_1x: float | None = None  # FLOP ratio
    token_ratio_vs_1x: float | None = None  # video token-count ratio, for contrast
    avctl_over_diffusers: float | None = None  # on diffusers rows: avctl's latency at the same setting / this one


# ------------------------------------------------------------------------------------------------ FLOP model
LINEAR_OPS = frozenset({"aten.mm", "aten.addmm"})  # nn.Linear (any leading dims) lowers to these


def meta_copy(transformer: torch.nn.Module) -> torch.nn.Module:
    """The same architecture built from `transformer.config` on the meta device: no memory, no weights, instant
    even for the full model. Only for counting."""
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return type(transformer)(**config).eval()


def _meta_stream(sc: StreamCanvas | None) -> StreamCanvas | None:
    if sc is None:
        return None
    meta = {f: getattr(sc, f).to("meta") for f in ("tokens", "coords", "timestep", "loss_mask")}
    if sc.sigma is not None:
        meta["sigma"] = sc.sigma.to("meta")
    return dataclasses.replace(sc, **meta)


def forward_flops(meta_transformer: torch.nn.Module, canvas: Canvas, text: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Matmul FLOPs of one `predict` on `canvas` (shapes only), counted on a `meta_copy`: {"total", "linear" (every
    nn.Linear: projections, feed-forwards, AdaLN), "attention" (the QKᵀ and AV products)}."""
    meta_canvas = Canvas(_meta_stream(canvas.video), _meta_stream(canvas.audio), canvas.direction)
    meta_text = tuple(t.to("meta") for t in text)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        predict(meta_transformer, meta_canvas, *meta_text)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in by_op.items() if op in LINEAR_OPS)
    total = int(counter.get_total_flops())
    return {"total": total, "linear": linear, "attention": total - linear}


# ------------------------------------------------------------------------------------------------ timing
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


def _canvas(backbone: Any, inputs: dict[str, Any], ref: torch.Tensor | None, s: int, strength: float,
            layout: str = "parallel") -> Canvas:
    tr = backbone.transformer
    sigma = torch.tensor([0.5], device=inputs["video"].device)
    refs = [Reference(ref, s, strength)] if ref is not None else []
    return Canvas(
        build_stream("video", tr, inputs["video"], sigma, refs, layout=layout),
        build_stream("audio", tr, inputs["audio"], sigma),
    )


def _time_once(fn: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


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


def check_bench_layout(layout: str, downscales: list[int]) -> None:
    if layout not in LAYOUTS:
        raise BadUsage(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "side-by-side" and set(downscales) != {1}:
        raise BadUsage("--layout side-by-side puts a full-size reference beside the target: use --downscale 1")


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
    layout: str = "parallel",
) -> list[BenchRow]:
    """`layout`: where the video reference sits (avctl.canvas.LAYOUTS); side-by-side takes downscale 1 only."""
    check_bench_layout(layout, downscales)
    for w in strengths:
        if not 0 <= w <= 1:
            raise BadUsage(f"strength {w} outside [0, 1]")
    tr = backbone.transformer.eval()
    device = backbone.device
    inputs = _inputs(backbone, width, height, frames)
    heads = tr.config.num_attention_heads
    meta_tr = meta_copy(tr)
    flops: dict[int | None, int] = {}  # per downscale: strength changes no matmul shape
    settings: list[tuple[str, int | None, float | None]] = [("avctl", None, None)]
    settings += [("avctl", s, w) for s in downscales for w in strengths]
    if compare_diffusers:
        # diffusers' fractional strengths mean something else (a hard mask), so compare at 1.0 and 0.0 only,
        # with avctl timed at the same two settings
        settings += [("avctl", 1, w) for w in (1.0, 0.0) if ("avctl", 1, w) not in settings]
        settings += [("diffusers", 1, w) for w in (1.0, 0.0)]
    prepared = []
    for path, s, w in settings:
        ref = _reference(backbone, inputs, s) if s is not None else None
        canvas = _canvas(backbone, inputs, ref, s or 1, 1.0 if w is None else w, layout)
        if path == "avctl":
            def step(c: Canvas = canvas) -> None:
                with torch.no_grad():
                    predict(tr, c, *inputs["text"])
        else:
            step = _diffusers_step(backbone, canvas, inputs, w)
        if s not in flops:
            flops[s] = forward_flops(meta_tr, canvas, inputs["text"])["total"]
        prepared.append((path, s, w, canvas, step))
    # CPU memory first, from a parent that has run nothing yet: each setting runs once in a forked child.
    cpu_peaks = {}
    if measure_memory and device.type != "cuda":
        cpu_peaks = {i: _forked_peak_rss(step) for i, (*_, step) in enumerate(prepared)}
    for _ in range(warmup):  # one-time costs (allocator growth, kernel selection) before anything is timed
        for *_, step in prepared:
            step()
    # Round-robin: every repetition times each setting once, so drift (other load, clocks) hits all alike.
    times: list[list[float]] = [[] for _ in prepared]
    for rep in range(steps):
        for i, (*_, step) in enumerate(prepared):
            times[i].append(_time_once(step, device))
        if progress:
            progress(rep + 1, steps)
    rows: list[BenchRow] = []
    for i, (path, s, w, canvas, step) in enumerate(prepared):
        peak = cpu_peaks.get(i)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            peak = torch.cuda.max_memory_allocated()
        v = canvas.video
        rows.append(BenchRow(path, s, w, v.tokens.shape[1], v.target_len, v.tokens.shape[1] - v.target_len,
                             statistics.median(times[i]), peak,
                             _bias_bytes(canvas, 1.0 if w is None else w, heads, path), flops[s]))
    base = rows[0]
    for row in rows:
        row.ratio_vs_noref = row.step_latency_s / base.step_latency_s
        one_x = next((r for r in rows if r.path == row.path and r.downscale == 1 and r.strength == row.strength),
                     None)
        if one_x is not None and row.downscale is not None:
            row.ratio_vs_1x = row.step_latency_s / one_x.step_latency_s
            row.predicted_ratio_vs_1x = row.predicted_flops / one_x.predicted_flops
            row.token_ratio_vs_1x = row.tokens / one_x.tokens
        if row.path == "diffusers":
            ours = next(r for r in rows if r.path == "avctl" and r.downscale == 1 and r.strength == row.strength)
            row.avctl_over_diffusers = ours.step_latency_s / row.step_latency_s
    return rows


def _forked_peak_rss(step: Any) -> int | None:
    """Run `step` once in a forked child and return the child's peak RSS in bytes (the model's pages are shared
    with the parent and count in every child alike, so the differences between settings are the settings')."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            torch.set_num_threads(1)  # OpenMP pools do not survive fork; memory does not depend on threads
            step()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            os.write(write_end, str(peak).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    data = os.read(read_end, 64)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return int(data) if status == 0 and data else None


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
    from avctl.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)



DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bench_model(model: str | None, downscales: list[int], strengths: list[float], *, width: int | None = None,
                height: int | None = None, frames: int | None = None, steps: int = 10, warmup: int = 2,
                measure_memory: bool = True, compare_diffusers: bool = True, layout: str = "parallel",
                dtype: str | None = None, progress: Any = None) -> tuple[str, list[BenchRow]]:
    """`avctl bench`: load what a step needs of `model` and time it (`run_bench`); returns (a one-line header
    naming the model, size, dtype, device and machine, the rows). Sizes default to 256x256x17 on tiny, else
    768x512 at 121 frames on a GPU, 25 on CPU (a real-width model at 121 frames takes minutes per step there and
    is still compute-bound at 25)."""
    import platform

    from avctl.backbone import TINY, open_backbone
    from avctl.env import model_name

    check_bench_layout(layout, downscales)  # before the model loads
    if dtype is not None and dtype not in DTYPES:
        raise BadUsage(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    name = model_name(model)
    tiny = name == TINY
    # Only what a step needs: the text encoder for one prompt, the audio VAE's sizes; no video VAE or vocoder.
    backbone = open_backbone(name, components={"transformer", "tokenizer", "text_encoder", "connectors", "audio_vae"},
                             dtype=DTYPES.get(dtype) if dtype else None)
    full_frames = 121 if backbone.device.type == "cuda" else 25
    w, h, f = width or (256 if tiny else 768), height or (256 if tiny else 512), frames or (17 if tiny else full_frames)
    rows = run_bench(backbone, downscales, strengths, w, h, f, steps=steps, warmup=warmup,
                     measure_memory=measure_memory, compare_diffusers=compare_diffusers, layout=layout,
                     progress=progress)
    device = str(backbone.device)
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    loaded = str(next(backbone.transformer.parameters()).dtype).removeprefix("torch.")
    header = (f"{backbone.model_id} {w}x{h}x{f}, {loaded}, {device}, {torch.get_num_threads()} threads, "
              f"{platform.machine()}" + (f", {layout} layout" if layout != "parallel" else ""))
    return header, rows
