"""One phase of the real-scale GPU check (examples/gpu_check.sh runs each phase in its own process, so each peak is
that phase's alone). Every measured peak is printed beside `avctl plan`'s estimate for the same run.

    train   20 steps of the canny LoRA (2x reference) on synthetic latents of the bucket, through avctl's own
            training loop: peak memory, s/step
    bench   one denoising step per reference downscale 1/2/4 x strength 1/0.5 (avctl bench's run_bench)
    decode  tiled VAE decode of the bucket's latents: peak memory, seconds

Modes: `full` is `--model shape` at 768x512x121 on a GPU; `smoke` is `shape:1` at 128x128x9 on a CPU (CI runs it, so
the script is known to work before a GPU sees it).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MODES = {
    "full": {"model": "shape", "bucket": (768, 512, 121), "steps": 20, "bench_steps": 3, "bench_warmup": 1},
    "smoke": {"model": "shape:1", "bucket": (128, 128, 9), "steps": 2, "bench_steps": 1, "bench_warmup": 0},
}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def _reset_peak(device: torch.device) -> int:
    """Start a peak window; returns the baseline (CPU: RSS now, as peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return 0
    return _rss()


def _peak_gib(device: torch.device, baseline: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline) / 2**30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _synthetic_samples(transformer: Any, bucket: tuple[int, int, int], downscale: int, n: int = 2) -> list[Any]:
    """Cache-shaped samples (normalised latents, text embeddings) of the bucket, bf16 like the cache."""
    from avctl.cache import Sample
    from avctl.modalities.base import get_modality
    from avctl.plan import canvas_tokens

    cfg = transformer.config
    width, height, frames = bucket
    t, s, _ = cfg.vae_scale_factors
    grid = ((frames - 1) // t + 1, height // s, width // s)
    audio_tokens = canvas_tokens(transformer, get_modality("canny"), bucket, 24.0)["audio"]
    text_video = cfg.caption_channels if cfg.use_prompt_embeddings else cfg.cross_attention_dim
    text_audio = cfg.caption_channels if cfg.use_prompt_embeddings else cfg.audio_cross_attention_dim
    g = torch.Generator().manual_seed(0)
    mel = cfg.audio_in_channels // 8
    out = []
    for _ in range(n):
        out.append(Sample(
            video=torch.randn(cfg.in_channels, *grid, generator=g).bfloat16(),
            audio=torch.randn(cfg.audio_in_channels // mel, audio_tokens, mel, generator=g).bfloat16(),
            reference=torch.randn(cfg.in_channels, grid[0], grid[1] // downscale, grid[2] // downscale,
                                  generator=g).bfloat16(),
            text_video=torch.randn(1024, text_video, generator=g).bfloat16(),
            text_audio=torch.randn(1024, text_audio, generator=g).bfloat16(),
            text_mask=torch.ones(1024),
            fps=24.0,
        ))
    return out


def phase_train(mode: dict[str, Any], device: torch.device, strategy: str | None = None) -> dict[str, Any]:
    """Training steps on this process's device; under torchrun every rank runs this (`strategy` ddp or fsdp) and
    each reports its own peak (rank 0's is returned, the largest of all in `peak_gib_max`)."""
    from avctl.backbone import load_backbone
    from avctl.modalities.base import get_modality
    from avctl.plan import PlanRequest, make_plan
    from avctl.train import Ranks, TrainConfig, train

    ranks = Ranks()
    device = ranks.device
    canny = get_modality("canny")
    backbone = load_backbone(mode["model"], device=device, components={"transformer"})
    samples = _synthetic_samples(backbone.transformer, mode["bucket"], canny.downscale, n=2 * ranks.world)
    rows: list[dict[str, Any]] = []
    baseline = _reset_peak(device)
    with tempfile.TemporaryDirectory(prefix="avctl-gpu-check-") as out:
        config = TrainConfig(modality="canny", out=Path(out), steps=mode["steps"], save_every=10**6, lr=1e-4,
                             strategy=strategy)  # type: ignore[arg-type]
        train(config, canny, samples, backbone.transformer, {}, progress=lambda s, t, row: rows.append(row),
              ranks=ranks)
    peak = _peak_gib(device, baseline)
    peaks = ranks.gather(peak)
    times = [r["step_time_s"] for r in rows[2:]] or [r["step_time_s"] for r in rows]
    # The weights were resident before the window opened on a CPU (RSS cannot be reset), so compare like with like.
    plan = make_plan(PlanRequest(modality="canny", model=mode["model"], bucket=mode["bucket"],
                                 world_size=ranks.world, strategy=strategy or "ddp",  # type: ignore[arg-type]
                                 device="cuda" if device.type == "cuda" else "cpu"))
    planned = plan.peak_gib if device.type == "cuda" else plan.peak_gib - plan.parts["transformer weights"]
    return {"steps": len(rows), "s_per_step": statistics.median(times) if times else None,
            "peak_gib": round(peak, 3), "peak_gib_max": round(max(peaks), 3), "world_size": ranks.world,
            "strategy": rows[0]["strategy"] if rows else None, "rank": ranks.rank,
            "plan_peak_gib": round(planned, 3), "plan_parts": plan.parts, "losses": [r["loss"] for r in rows]}


def phase_bench(mode: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from avctl.backbone import load_backbone
    from avctl.bench import rows_to_dicts, run_bench
    from avctl.plan import PlanRequest, make_plan

    backbone = load_backbone(mode["model"], device=device,
                             components={"transformer", "text_encoder", "connectors", "tokenizer", "audio_vae"})
    width, height, frames = mode["bucket"]
    rows = run_bench(backbone, [1, 2, 4], [1.0, 0.5], width, height, frames, steps=mode["bench_steps"],
                     warmup=mode["bench_warmup"], measure_memory=device.type == "cuda", compare_diffusers=False)
    plan = make_plan(PlanRequest(modality="canny", model=mode["model"], bucket=mode["bucket"]))
    resident = (plan.parts["transformer weights"] + plan.precompute["text encoder weights"]
                + plan.precompute["connectors weights"])
    return {"rows": rows_to_dicts(rows), "plan_resident_weights_gib": round(resident, 3)}


def phase_decode(mode: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from avctl.backbone import load_backbone
    from avctl.plan import PlanRequest, make_plan

    backbone = load_backbone(mode["model"], device=device, components={"vae"})
    width, height, frames = mode["bucket"]
    grid = backbone.latent_grid(frames, height, width)
    latents = torch.randn(1, backbone.vae.config.latent_channels, *grid, generator=torch.Generator().manual_seed(0))
    baseline = _reset_peak(device)
    start = time.perf_counter()
    video = backbone.decode_video(latents.to(device, backbone.dtype))
    seconds = time.perf_counter() - start
    plan = make_plan(PlanRequest(modality="canny", model=mode["model"], bucket=mode["bucket"]))
    peak = _peak_gib(device, baseline)
    return {"frames": list(video.shape), "seconds": round(seconds, 2), "peak_gib": round(peak, 3),
            "plan_vae_gib": round(plan.precompute["vae weights"] + plan.precompute["encoding activations"], 3)}


PHASES = {"train": phase_train, "bench": phase_bench, "decode": phase_decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--phase", choices=sorted(PHASES), required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for this phase's result")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), help="train phase under torchrun: ddp or fsdp")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.mode == "full" and device.type != "cuda":
        sys.exit("gpu_check: the full mode needs a CUDA GPU; use --smoke on a CPU")
    mode = MODES[args.mode]
    start = time.perf_counter()
    kwargs = {"strategy": args.strategy} if args.phase == "train" else {}
    result = PHASES[args.phase](mode, device, **kwargs)
    if result.get("rank", 0) != 0:
        return  # under torchrun rank 0 writes the result
    result.update({"phase": args.phase, "mode": args.mode, "model": mode["model"], "device": _device_name(device),
                   "bucket": "x".join(map(str, mode["bucket"])), "wall_s": round(time.perf_counter() - start, 1),
                   "torch": torch.__version__})
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
