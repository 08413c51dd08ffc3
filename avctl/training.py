"""`avctl train` as a library: from a validated `TrainConfig` to a trained LoRA — the dataset's checks, the memory
plan (before anything loads), the latent cache (rank 0 fills it, other ranks wait), the transformer, the loop.

`train.py` holds the loop itself; this module wires the data, the cache and the model around it, so the loop
knows no cache or dataset folder and the CLI only parses and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avctl.errors import BadUsage

Progress = Callable[[int, int, str], None]  # (done, total, info)


@dataclass
class TrainHooks:
    """How a training run reports (main rank only; all optional): one-line notes and progress bars."""

    log: Callable[[str], None] | None = None
    progress: Callable[[str, int | None], Progress] | None = None  # (label, total) → update


def check_memory(cfg: Any, bucket: Any, world: int, enforce: bool, log: Callable[[str], None] | None) -> None:
    """Report the run's memory plan (before anything loads); on a GPU refuse one that will not fit."""
    import torch

    from avctl.plan import training_plan, visible_gpu_gib
    from avctl.train import default_strategy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    strategy = (cfg.strategy or default_strategy()) if world > 1 else "ddp"
    plan = training_plan(cfg, (bucket.width, bucket.height, bucket.frames), world, device, visible_gpu_gib(),
                         strategy)
    if log is not None:
        parts = ", ".join(f"{name} {gib:.2f}" for name, gib in plan.parts.items())
        verdict = "" if plan.fits is None else (" — fits" if plan.fits else " — does NOT fit") + \
            f" in {plan.gpu_memory_gib:.0f} GiB"
        log(f"plan: {max(plan.peak_gib, plan.precompute_peak_gib):.2f} GiB per {device} device ({parts}; "
            f"precompute {plan.precompute_peak_gib:.2f}){verdict}; `avctl plan` for details")
    if device == "cuda" and enforce and plan.fits is False:
        advice = f"; try {plan.advice[0]}" if plan.advice else ""
        raise BadUsage(f"this run needs about {max(plan.peak_gib, plan.precompute_peak_gib):.1f} GiB per GPU, more "
                       f"than the {plan.gpu_memory_gib:.0f} GiB visible{advice} (or --no-memory-check to try anyway)")


def run_training(cfg: Any, *, resume: bool = True, allow_outside_media: bool = False, vae_tiling: bool = True,
                 memory_check: bool = True, quiet: bool = False, hooks: TrainHooks | None = None) -> Any:
    """Train the LoRA `cfg` (a train.TrainConfig) describes. Everything that can be refused is checked before any
    weights load. Returns the train.TrainResult on the main rank, None on the others."""

    from avctl.backbone import open_backbone
    from avctl.cache import cached_prompt, precompute, wait_for_cache
    from avctl.config import check_avctl_dataset
    from avctl.dataset import check_dataset, load_manifest, remove_stale_temp_files
    from avctl.env import model_name
    from avctl.modalities.base import get_modality
    from avctl.quantize import check_quantize_args, quantize_backbone
    from avctl.train import BASE_DTYPES, Ranks, check_strategy, default_strategy, train, with_layout
    from avctl.validation import make_validator

    hooks = hooks or TrainHooks()
    mod = with_layout(get_modality(cfg.modality), cfg.layout)  # side-by-side on a downscaled modality stops here
    cfg.data = cfg.data or Path("datasets") / mod.name
    check_avctl_dataset(cfg.data)
    cfg.out = cfg.out or Path("runs") / mod.name
    cfg.model = model_name(cfg.model)
    check_quantize_args(cfg.quantize, cfg.text_encoder_8bit)
    if cfg.targets:
        from avctl.lora import target_modules

        target_modules(cfg.targets)  # an unknown group stops here, before the plan or anything else

    info, rows = load_manifest(cfg.data, allow_outside_media)
    bucket = check_dataset(info, mod)
    ranks = Ranks(start=False)  # the process group starts once the cache is complete
    check_strategy(cfg, ranks.world)
    if ranks.main:  # temp files of a killed run: nothing refers to them
        remove_stale_temp_files(cfg.out, ("state", "checkpoints", "samples"))
    quiet = quiet or not ranks.main
    log = None if quiet else hooks.log

    def bar(label: str, total: int | None) -> Progress:
        if quiet or hooks.progress is None:
            return lambda done, total, info="": None
        return hooks.progress(label, total)

    def quantized(backbone: Any, quantize: str | None, text_encoder_8bit: bool) -> None:
        for report in quantize_backbone(backbone, quantize, text_encoder_8bit):
            if log is not None:
                log(f"quantized {report.summary()}")

    check_memory(cfg, bucket, ranks.world, memory_check, log)
    base_dtype = BASE_DTYPES[cfg.dtype] if cfg.dtype else None  # None: bf16 on CUDA, fp32 on CPU
    # Only the configs first: the cache's freshness needs no weights, so a complete cache loads no encoder.
    backbone = open_backbone(cfg.model, components=set(), dtype=base_dtype, vae_tiling=vae_tiling)
    backbone.text_encoder_8bit = cfg.text_encoder_8bit

    def load_encoders(parts: frozenset[str]) -> Any:
        encoders = open_backbone(cfg.model, components=set(parts), vae_tiling=vae_tiling)
        quantized(encoders, None, cfg.text_encoder_8bit)
        return encoders

    prompts = (rows[0].get("caption", ""), "") if cfg.validate_every and rows else ()  # validation's, negative
    encoding = bar("encode", len(rows))
    # Rank 0 fills the latent cache; the others poll its files. No process group exists yet, so no collective can
    # time out however long the encoding takes.
    if ranks.main:
        index = precompute(backbone, cfg.data, info, rows, load_encoders, prompts=prompts,
                           progress=lambda d, t: encoding(d, t, "")).index
    else:
        index = wait_for_cache(backbone, cfg.data, info, rows)
    ranks.start()
    # The encoders are released by now; the transformer alone is loaded for training. Under FSDP only rank 0 reads
    # it: the others build it on `meta` and receive their shards from rank 0 (train()).
    if ranks.world > 1 and (cfg.strategy or default_strategy()) == "fsdp" and not ranks.main:
        from avctl.presets import build_module

        backbone.transformer = build_module("transformer", backbone.configs["transformer"])
    else:
        trained = open_backbone(cfg.model, components={"transformer"}, dtype=base_dtype)
        # Quantized after the dtype cast and before train() adds the LoRA (PEFT picks its layer type then).
        quantized(trained, cfg.quantize, False)
        backbone.transformer = trained.transformer
    samples = index.samples()
    stepping = bar(f"train {mod.name}", cfg.steps or mod.steps)

    def tick(step: int, total_steps: int, row: dict[str, float]) -> None:
        stepping(step, total_steps, f"loss {row['loss']:.4f}")

    model_meta = {"model_id": backbone.model_id, "config_hash": backbone.config_hash(),
                  "extractor_options": info.get("extractor_options")}
    validator = None
    if cfg.validate_every and ranks.main:
        validator = make_validator(
            backbone, cfg.data, rows[0], mod, cfg.out, cfg.seed,
            texts={p: cached_prompt(index, backbone, p) for p in prompts},
            load_decoders=lambda: open_backbone(cfg.model, components={"vae", "audio_vae", "vocoder"},
                                                dtype=base_dtype, vae_tiling=vae_tiling))
    result = train(cfg, mod, samples, backbone.transformer, model_meta, resume=resume, progress=tick,
                   validate=validator, ranks=ranks)
    return result if ranks.main else None
