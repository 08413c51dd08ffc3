"""The `avctl` command line: one thin function per subcommand (parse, call the library, print or --json).

Exit codes: 0 ok, 1 failed (nothing or not everything was done), 2 bad usage. Library errors arrive as
`AvctlError` and leave here as one line on stderr — never a traceback for bad input. Progress goes to stderr, data
(--json) to stdout, so scripts can pipe it.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import avctl.env as env
from avctl.errors import AvctlError, BadInput, BadUsage

app = typer.Typer(
    name="avctl",
    help="Train and use audio-visual control LoRAs (AVControl) on LTX-2.\n\n"
    "Chain: prepare (videos → dataset) → train (dataset → LoRA) → generate (prompt + control → mp4).",
    epilog=env.help_text(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: click wraps each paragraph and shows text as written. Markdown would drop `<stem>`-style
    # placeholders as inline HTML, and rich markup would eat `[@WEIGHT]`.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},  # wrap at the terminal's width up to 120, not click's 80
)
err = Console(stderr=True)
out = Console()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` once, right after `name` is first imported (a one-shot import hook)."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def run(module: Any) -> None:
                exec_module(module)
                self.then(module)

            spec.loader.exec_module = run  # type: ignore[method-assign]
        return spec


def _quiet_library_progress() -> None:
    """Only avctl's own progress shows: Hugging Face Hub, transformers and diffusers bars (downloads, checkpoint
    shards) are switched off. The hub and transformers read HF_HUB_DISABLE_PROGRESS_BARS at import (a value the
    user set is kept); diffusers has no such variable, and importing it here would cost every command seconds of
    torch import, so its switch is flipped when it is first imported."""
    env.HF_HUB_DISABLE_PROGRESS_BARS.set_default("1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    name = "diffusers.utils.logging"
    if name in sys.modules:
        sys.modules[name].disable_progress_bar()
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, lambda module: module.disable_progress_bar()))


def _version(value: bool) -> None:
    if value:
        try:
            found = importlib.metadata.version("avctl")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
            found = "unknown (not installed)"
        out.print(f"avctl {found}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print avctl's version and exit.")
    ] = False,
) -> None:
    _quiet_library_progress()

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="LTX-2 weights: a diffusers-format directory, a hub id already in the local cache, 'pocket' (small "
        "pretrained CPU model), 'tiny' (random test model), or 'shape' / 'shape:L' (LTX-2's real configs with "
        "random weights; L transformer and text-encoder blocks). Default: $AVCTL_MODEL, else Lightricks/LTX-2.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
AllowOutsideOpt = Annotated[
    bool,
    typer.Option(
        "--allow-outside-media",
        help="Accept manifest media paths that lie outside the dataset folder (absolute, '..' or symlinked out); "
        "refused by default so a row can never make avctl read or write beside files that are not the dataset's.",
    ),
]
VaeTilingOpt = Annotated[
    bool,
    typer.Option(
        "--vae-tiling/--no-vae-tiling",
        help="Encode and decode video in overlapping tiles of 512 px and 32 frames, blended (lower VAE memory; "
        "see docs/vae_tiling.md). --no-vae-tiling runs the VAE on the whole clip.",
    ),
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option(help="Quantize the frozen transformer's block Linear layers, weight-only: none (default), int8 or "
                 "fp8 (torchao; patchify, adaLN, norms and projections in/out stay as they are; a LoRA still "
                 "trains in fp32). See docs/quantization.md."),
]
TextEncoder8bitOpt = Annotated[
    bool,
    typer.Option("--text-encoder-8bit",
                 help="Run the Gemma text encoder's decoder layers in int8 (weight-only, about half its memory)."),
]


def _progress(json_mode: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=json_mode,
        disable=env.NO_PROGRESS.get() == "1",
    )


class _Bars:
    """Progress bars on stderr, started with the first bar, so a process that shows none (a refused run, a
    non-main rank) draws nothing."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.progress: Progress | None = None

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def add(self, label: str, total: int | None = None) -> Callable[..., None]:
        """A new bar; returns update(done, total, info="")."""
        if self.progress is None:
            self.progress = _progress(self.json_mode)
            self.progress.start()
        progress = self.progress
        task = progress.add_task(label, total=total, info="")
        return lambda done, total, info="": progress.update(task, completed=done, total=total, info=info)


def _line(text: str) -> None:
    """One line on stderr, printed as it is (no markup, no wrapping)."""
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def _finite(data: Any) -> Any:
    """JSON has no inf/nan: write them as strings so `--json` output stays strict JSON."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")


def _model_name(model: str | None) -> str | None:
    return env.model_name(model)  # None: the backbone's default (LTX-2)


def command(
    name: str, group: typer.Typer | None = None, label: str | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a subcommand whose library errors become one line on stderr and the error's exit code (so the
    same behaviour holds under `avctl` and under an in-process CliRunner)."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except AvctlError as exc:
                err.print(f"avctl {label or name}: error: {exc}", highlight=False, markup=False, soft_wrap=True)
                raise typer.Exit(exc.exit_code) from exc
            except OSError as exc:  # a disk error outside avctl.io (a library's own write): still one line
                where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
                err.print(f"avctl {label or name}: error: {where}{exc.strerror or exc}", highlight=False,
                          markup=False, soft_wrap=True)
                raise typer.Exit(1) from exc

        return (group or app).command(name)(run)

    return wrap


# ------------------------------------------------------------------------------------------------ modalities
@command("modalities")
def modalities_cmd(json_out: JsonOpt = False) -> None:
    """List the registered control modalities and their training defaults (the paper's Table 5)."""
    from avctl.modalities.base import all_modalities

    mods = all_modalities()
    if json_out:
        _emit([m.to_dict() for m in mods.values()])
        return
    table = Table(title="avctl modalities")
    for col in ("name", "category", "reference", "context", "layout", "downscale", "rank", "LoRA targets", "steps"):
        table.add_column(col)
    for m in mods.values():
        table.add_row(
            m.name, m.category, "+".join(m.streams), m.context, m.layout, f"{m.downscale}×", str(m.rank),
            ", ".join(m.targets), str(m.steps),
        )
    out.print(table)


# ------------------------------------------------------------------------------------------------ prepare
@command("prepare")
def prepare_cmd(
    modality: Annotated[str, typer.Argument(help="Modality name (see `avctl modalities`).")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Video files or folders (searched recursively); for paired modalities (local-edit, "
                       "cut-on-action, camera-video) a pairs manifest: .jsonl lines {\"source\", \"target\", "
                       "\"caption\"?} or a .csv with source,target[,caption] columns, paths relative to it. "
                       "camera-video also builds its pairs from plain videos (depth + camera, re-rendered along a "
                       "sampled camera path; docs/camera_training.md)."),
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Dataset folder. Default: datasets/<modality>.")] = None,
    bucket: Annotated[
        str | None,
        typer.Option(help="WxHxF size every clip is resized/cropped/cut to. Default: the model's usual size."),
    ] = None,
    caption: Annotated[str | None, typer.Option(help="Caption for clips without a sidecar <stem>.txt.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for random controls (masks, degradations). Default 42.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Clips processed in parallel; results do not depend on it. Default 1.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo finished samples / replace a dataset of another kind.")] = False,
    weights: Annotated[
        Path | None,
        typer.Option(help="Extractor weights (model-backed extractors). Looked up as --weights, then "
                     "$AVCTL_HOME/weights/BACKEND, then the Hugging Face cache; never downloaded."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Extractor backend, where a modality offers several (tracks: opencv-lk; speech-ambient: "
                     "deepfilternet, demucs; who-is-talking: silero, energy; camera-image: opencv, files). Recorded "
                     "in avctl.json."),
    ] = None,
    speakers: Annotated[
        Path | None,
        typer.Option(help="who-is-talking: a JSON Lines file of per-speaker segments {clip, speaker, start, end} or "
                     "tracks {clip, speaker, audio}; replaces the guess from mouth motion and the mixed track."),
    ] = None,
    line_width: Annotated[
        int | None,
        typer.Option(help="canny: draw edges N px wide (dilated at bucket size; default 1, the paper's rule). For "
                     "small clips, e.g. 64 px on the pocket model, 3 makes the edges survive the VAE. Recorded in "
                     "avctl.json and in the LoRA."),
    ] = None,
    variants: Annotated[
        int,
        typer.Option(min=1, help="Samples made per video, each with its own random draws (camera-video: its sampled "
                     "source camera path; inpaint: its mask). Variant k > 0 is named <clip>.vk."),
    ] = 1,
    encode: Annotated[
        bool,
        typer.Option("--precompute", "--encode",
                     help="Also fill the latent cache for --model now (what `avctl train` would do first): only the "
                     "encoders are loaded, and only when an entry is missing; fresh entries are kept."),
    ] = False,
    model: ModelOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML/TOML config (docs/configs.md), e.g. configs/MODALITY.yaml: its modality, "
                     "model.model_path, data.preprocessed_data_root (--out), seed and prepare section (bucket, "
                     "caption, workers, weights, backend, speakers, line_width, precompute); flags override it."),
    ] = None,
    allow_outside_media: AllowOutsideOpt = False,
    vae_tiling: VaeTilingOpt = True,
    json_out: JsonOpt = False,
) -> None:
    """Extract controls from videos (or take pairs from a manifest) into an ltx-trainer-compatible dataset
    (dataset.jsonl + media). Weightless extractors need no model weights. Rerunning skips finished clips.
    Options may come from `--config` (e.g. configs/MODALITY.yaml)."""
    from avctl.config import FileOptions, check_avctl_dataset, prepare_options
    from avctl.modalities.base import get_modality
    from avctl.prepare import bucket_for, encode_for_model, model_factors, prepare

    mod = get_modality(modality)
    file_opts = prepare_options(config, mod) if config else FileOptions({})
    if config and (warning := file_opts.warning(config)):
        err.print(f"avctl prepare: warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    fv = file_opts.values
    out_dir = out_dir or (Path(fv["out"]) if "out" in fv else None)
    model, bucket, caption, backend = (model or fv.get("model"), bucket or fv.get("bucket"),
                                       caption or fv.get("caption"), backend or fv.get("backend"))
    weights = weights or (Path(fv["weights"]) if "weights" in fv else None)
    speakers = speakers or (Path(fv["speakers"]) if "speakers" in fv else None)
    line_width = line_width if line_width is not None else fv.get("line_width")
    seed = seed if seed is not None else fv.get("seed", 42)
    workers = workers if workers is not None else fv.get("workers", 1)
    encode = encode or fv.get("precompute", False)
    model_name = _model_name(model)
    b = bucket_for(bucket, model_name, mod.downscale)
    target = out_dir or Path("datasets") / modality
    check_avctl_dataset(target)
    counts = {"encoded": 0, "cached": 0}
    with _progress(json_out) as progress:
        task = None

        def tick(done: int, total: int) -> None:
            nonlocal task
            if task is None:  # created on the first report, so a refused run shows no empty bar
                task = progress.add_task(f"prepare {modality}", total=total, info="")
            progress.update(task, completed=done, total=total)

        summary = prepare(mod, list(inputs), target, b, caption, seed=seed, workers=workers, overwrite=overwrite,
                          progress=tick, weights=weights, backend=backend, factors=model_factors(model_name),
                          options={"speakers": speakers, "line_width": line_width}, variants=variants)
        if encode and summary.rows:
            encoding = progress.add_task("encode", total=summary.rows, info="")
            counts = encode_for_model(target, model_name, vae_tiling=vae_tiling,
                                      progress=lambda d, t: progress.update(encoding, completed=d, total=t),
                                      allow_outside_media=allow_outside_media)
    data = summary.to_dict()
    if encode:
        data.update(counts)
    if json_out:
        _emit(data)
    else:
        table = Table(title=f"prepare {modality} → {target}")
        table.add_column("result")
        table.add_column("clips")
        table.add_column("details")
        for key in ("done", "skipped", "failed"):
            items = data.get(key, [])
            detail = "; ".join(str(i.get("reason", i.get("video", i))) if isinstance(i, dict) else str(i)
                               for i in items[:3])
            table.add_row(key, str(len(items)), detail)
        err.print(table)
        err.print(f"{len(data['done'])} new samples from {data['inputs']} inputs ({len(data['skipped'])} skipped, "
                  f"{len(data['failed'])} failed, {len(data['existing'])} already done)")
        for note, counts in data.get("made_from", {}).items():
            err.print(f"{note}: " + ", ".join(f"{value} ×{n}" for value, n in sorted(counts.items())))
        err.print(f"dataset: {target / 'dataset.jsonl'}")
        if data.get("frames_per_s"):
            err.print(f"extraction: {data['frames_per_s']:g} frames/s")
        if encode:
            err.print(f"latent cache: {data['encoded']} encoded now, {data['cached']} already fresh")
    if not data.get("done") and not data.get("existing"):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ train
@command("train")
def train_cmd(
    modality: Annotated[str, typer.Argument(help="Modality name (see `avctl modalities`).")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset. Default: datasets/<modality>.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder. Default: runs/<modality>.")] = None,
    model: ModelOpt = None,
    steps: Annotated[int | None, typer.Option(help="Absolute target step. Default: the modality's.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank (alpha = rank). Default: the modality's.")] = None,
    targets: Annotated[
        str | None,
        typer.Option(help="LoRA module groups, comma-separated: V.SA, V.CA, V.FF, A.SA, A.CA, A.FF, A→V, V→A. "
                     "Default: the modality's (paper Table 5; see `avctl modalities`)."),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(help="Canvas layout: parallel (the reference on the target's own positions) or side-by-side "
                     "(IC-LoRA style: to the target's right; needs a downscale-1 modality). Written into the LoRA "
                     "(avctl.layout), which generate samples on. Default: the modality's."),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (linear decay to 1e-5). Default 1e-4.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step. Default 1.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps. Default 1.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for σ, noise and data order. Default 42.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML/TOML config with ltx-trainer-style sections (model, lora, optimization, "
                     "acceleration, data, validation, checkpoints, seed, output_dir; docs/configs.md), e.g. "
                     "configs/MODALITY.yaml or an ltx-trainer IC-LoRA config; flags override it."),
    ] = None,
    resume: Annotated[
        bool | None,
        typer.Option("--resume/--no-resume",
                     help="Continue from OUT/state when its configuration matches. Default: on (config: "
                     "checkpoints.no_resume)."),
    ] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint + resume state every N steps.")] = None,
    keep_last: Annotated[int | None, typer.Option(help="Checkpoints kept.")] = None,
    validate_every: Annotated[
        int | None,
        typer.Option(help="Every N steps, generate a sample from the first manifest row into OUT/samples/ "
                     "(mp4 + control | output PNG)."),
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="adamw (default) or adamw8bit (needs bitsandbytes, CUDA).")
    ] = None,
    loraplus_lr_ratio: Annotated[
        float | None,
        typer.Option(help="LoRA+: lora_B's learning rate is this many times --lr (kohya/musubi-tuner's "
                     "loraplus_lr_ratio). Default 1 = plain AdamW, the paper's recipe."),
    ] = None,
    tensorboard: Annotated[bool, typer.Option(help="Also log to OUT/tensorboard (needs tensorboard).")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(help="The frozen base's dtype, bf16 or fp32 (the LoRA and its optimizer state are fp32 "
                     "either way). Default: bf16 on a GPU, fp32 on CPU."),
    ] = None,
    loader_workers: Annotated[
        int | None,
        typer.Option(help="DataLoader processes reading the latent cache from disk. Default: 2 on a GPU, 0 on CPU "
                     "(read in the training process)."),
    ] = None,
    prefetch_factor: Annotated[
        int | None, typer.Option(help="Samples each loader process reads ahead. Default 2.")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Several ranks (torchrun / accelerate launch): ddp (each GPU holds the model, gradients "
                     "averaged) or fsdp (torch FSDP2: transformer blocks and their LoRA sharded over the ranks). "
                     "Default: ddp; fsdp under accelerate launch with configs/accelerate/fsdp.yaml."),
    ] = None,
    allow_outside_media: AllowOutsideOpt = False,
    vae_tiling: VaeTilingOpt = True,
    quantize: QuantizeOpt = None,
    text_encoder_8bit: TextEncoder8bitOpt = False,
    memory_check: Annotated[
        bool,
        typer.Option(help="On a GPU, refuse a run that `avctl plan` says will not fit, before loading anything "
                     "(the plan is printed either way)."),
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Train a control LoRA on a prepared dataset: frozen LTX-2, LoRA on the modality's modules, loss on target
    tokens only. Writes OUT/lora.safetensors (ComfyUI / ltx-trainer format), checkpoints/, state/, metrics.jsonl.
    Options may come from `--config` (configs/MODALITY.yaml, or an ltx-trainer config)."""
    from pydantic import ValidationError

    from avctl.config import FileOptions, train_options
    from avctl.modalities.base import get_modality
    from avctl.train import TrainConfig
    from avctl.training import TrainHooks, run_training

    file_opts = train_options(config, get_modality(modality)) if config else FileOptions({})
    if config and (warning := file_opts.warning(config)):
        err.print(f"avctl train: warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    file_values = file_opts.values
    resume = resume if resume is not None else file_opts.resume is not False
    cli_values = {
        "modality": modality, "data": data, "out": out_dir, "model": model, "steps": steps, "rank": rank,
        "targets": [t.strip() for t in targets.split(",") if t.strip()] if targets else None, "layout": layout,
        "lr": lr,
        "batch_size": batch_size, "grad_accum": grad_accum, "seed": seed, "save_every": save_every,
        "keep_last": keep_last, "validate_every": validate_every, "optimizer": optimizer,
        "loraplus_lr_ratio": loraplus_lr_ratio,
        "tensorboard": tensorboard or None, "dtype": dtype, "loader_workers": loader_workers,
        "prefetch_factor": prefetch_factor, "strategy": strategy,
        "quantize": quantize, "text_encoder_8bit": text_encoder_8bit or None,
    }
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    try:
        cfg = TrainConfig(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise BadUsage(f"train option {where!r}: {first['msg']}") from exc
    with _Bars(json_out) as bars:
        result = run_training(
            cfg, resume=resume, allow_outside_media=allow_outside_media, vae_tiling=vae_tiling,
            memory_check=memory_check, quiet=json_out, hooks=TrainHooks(log=_line, progress=bars.add))
    if result is None:  # not the main rank
        return
    if json_out:
        _emit(result.to_dict())
    else:
        err.print(f"LoRA: {result.lora_path}  (steps {result.resumed_from}→{result.steps}, "
                  f"loss {result.to_dict()['first_loss']:.4f} → {result.to_dict()['last_loss']:.4f})")


# ------------------------------------------------------------------------------------------------ plan
def print_plan(plan: Any) -> None:
    """The plan as two tables (training step, precompute) and a verdict with advice, on stderr."""
    tokens = plan.tokens
    table = Table(title=f"avctl plan — {plan.request['modality']} on {plan.model}, bucket {plan.request['bucket']}, "
                  f"{tokens['video']} video + {tokens['audio']} audio tokens per sample", show_header=True)
    table.add_column("phase")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for phase, parts, peak in (("training step", plan.parts, plan.peak_gib),
                               ("precompute", plan.precompute, plan.precompute_peak_gib)):
        for name, gib in parts.items():
            table.add_row(phase, name, f"{gib:.2f}")
        table.add_row(phase, "[bold]peak[/bold]", f"[bold]{peak:.2f}[/bold]")
    err.print(table)
    ckpt = "on" if plan.gradient_checkpointing else "off"
    err.print(f"LoRA {plan.lora_parameters / 1e6:.1f}M parameters, gradient checkpointing {ckpt}")
    if plan.fits is None:
        err.print("no GPU memory to compare with (no GPU visible); pass --gpu-memory GIB")
    elif plan.fits:
        err.print(f"fits in {plan.gpu_memory_gib:g} GiB")
    else:
        advice = f"; to fit, try: {plan.advice[0]}" if plan.advice else "; nothing avctl can change makes it fit"
        err.print(f"does NOT fit in {plan.gpu_memory_gib:g} GiB{advice}")


@command("plan")
def plan_cmd(
    modality: Annotated[str, typer.Argument(help="Modality name (see `avctl modalities`).")],
    model: ModelOpt = None,
    bucket: Annotated[str, typer.Option(help="Training clip size WIDTHxHEIGHTxFRAMES.")] = "768x512x121",
    fps: Annotated[float, typer.Option(help="Clip frame rate (sets the audio token count).")] = 24.0,
    rank: Annotated[int | None, typer.Option(help="LoRA rank. Default: the modality's.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per step per GPU.")] = 1,
    quantize: Annotated[str, typer.Option(help="Frozen base: none, int8 or fp8.")] = "none",
    text_encoder_8bit: Annotated[bool, typer.Option(help="Plan the 8-bit text encoder for precompute.")] = False,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option(help="Default: on for any model larger than pocket.")
    ] = None,
    world_size: Annotated[int, typer.Option(help="GPUs training together.")] = 1,
    strategy: Annotated[str, typer.Option(help="ddp (each GPU holds the model) or fsdp (sharded).")] = "ddp",
    dtype: Annotated[str, typer.Option(help="Frozen base dtype: bf16 or fp32.")] = "bf16",
    optimizer: Annotated[str, typer.Option(help="adamw or adamw8bit.")] = "adamw",
    device: Annotated[str, typer.Option(help="cuda (plan for a GPU) or cpu (what a CPU run holds).")] = "cuda",
    gpu_memory: Annotated[
        float | None, typer.Option(help="GiB to fit in. Default: the visible GPU's memory.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-GPU peak memory of a training run, part by part, from the model's configs on `meta` (nothing is loaded)
    and per-token activation costs measured at LTX-2's real width; whether it fits, and flags that would make it."""
    from avctl.plan import PlanRequest, make_plan, parse_bucket, visible_gpu_gib

    choices = {"quantize": (quantize, ("none", "int8", "fp8")), "strategy": (strategy, ("ddp", "fsdp")),
               "dtype": (dtype, ("bf16", "fp32")), "optimizer": (optimizer, ("adamw", "adamw8bit")),
               "device": (device, ("cuda", "cpu"))}
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            raise BadUsage(f"--{flag} {value!r}: choose one of {', '.join(allowed)}")
    request = PlanRequest(
        modality=modality, model=_model_name(model), bucket=parse_bucket(bucket), fps=fps, rank=rank,
        batch_size=batch_size, quantize=quantize, text_encoder_8bit=text_encoder_8bit,  # type: ignore[arg-type]
        gradient_checkpointing=gradient_checkpointing, world_size=world_size, strategy=strategy,  # type: ignore[arg-type]
        dtype=dtype, optimizer=optimizer, device=device,  # type: ignore[arg-type]
        gpu_memory_gib=gpu_memory if gpu_memory is not None else visible_gpu_gib(),
    )
    plan = make_plan(request)
    if json_out:
        _emit(plan.to_dict())
    else:
        print_plan(plan)


# ------------------------------------------------------------------------------------------------ generate
@command("generate")
def generate_cmd(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Option(help="Text prompt (required unless every --batch row has one).")] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(help="NAME_OR_PATH[@WEIGHT], repeatable. NAME resolves to runs/NAME/lora.safetensors, then "
                     "$AVCTL_HOME/runs/NAME/lora.safetensors. @WEIGHT scales the LoRA (default 1). Video and audio "
                     "LoRAs (metadata avctl.streams) may be mixed: they run in one joint pass."),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(help="[NAME=]PATH control per LoRA (by LoRA name, run folder or modality; or in order): a video "
                     "for a video LoRA, a .wav or a video with sound for an audio LoRA."),
    ] = None,
    from_video: Annotated[
        Path | None,
        typer.Option(help="Source video: each LoRA without a --control gets its control from its modality's "
                     "extractor (as `avctl prepare` makes it), at the output size; saved as OUT.control-K.mp4."),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(help="First-frame image (or a video's first frame): encoded as the first latent frame and kept "
                     "clean (timestep 0) while the rest is generated. For camera-image / local-edit."),
    ] = None,
    composite: Annotated[
        bool,
        typer.Option(help="Merge the video LoRAs' controls into ONE reference (a later control's non-black pixels, "
                     "any channel > 16, overwrite earlier ones) attended by all of them. Needs equal downscales."),
    ] = False,
    keep_video: Annotated[
        Path | None,
        typer.Option(help="Keep this video as clean context (timestep 0) and generate only the audio: audio for a "
                     "given video (audio-intensity as trained; speech-ambient's audio replacement)."),
    ] = None,
    keep_audio: Annotated[
        Path | None,
        typer.Option(help="Keep this audio (a .wav or a video's sound) as clean context and generate only the video "
                     "(who-is-talking with your own speech)."),
    ] = None,
    camera: Annotated[
        str | None,
        typer.Option(help="Camera LoRAs: PRESET[@STRENGTH] or a trajectory .json (one camera per output frame). "
                     "camera-image renders --image along it, camera-video re-renders --from-video; presets: "
                     "static, dolly-in/out, truck-left/right, crane-up/down, pan-left/right, tilt-up/down, "
                     "orbit-left/right, zoom-in/out, dolly-zoom-in/out (see docs/camera.md)."),
    ] = None,
    depth: Annotated[
        Path | None,
        typer.Option(help="Depth for --camera: .npy z-depth, or a grey image/video with near = white. Default: the "
                     "depth model (Depth-Anything-V2 weights in $AVCTL_HOME/weights or the hub cache)."),
    ] = None,
    fov: Annotated[float, typer.Option(help="Vertical field of view (degrees) of --image / --from-video for "
                                            "--camera presets.")] = 50.0,
    strength: Annotated[float, typer.Option(help="Attention strength to the reference, 0–1 (1 = full).")] = 1.0,
    strength_map: Annotated[
        Path | None, typer.Option(help="Grey image or video, white = full strength, mapped onto the reference.")
    ] = None,
    strength_ramp: Annotated[str | None, typer.Option(help="START:END linear strength over time, e.g. 1:0.")] = None,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 42,
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps. Default 30 (shifted); the distilled schedule has exactly 8.")
    ] = None,
    schedule: Annotated[
        str,
        typer.Option(help="σ schedule: auto (the preset's), official (the model's scheduler config as "
                     "LTX2Pipeline uses it: shift by target token count, stretched to its terminal σ), shifted "
                     "(LoRA-training shift, no stretch) or distilled (LTX-2's fixed 8-step list)."),
    ] = "auto",
    preset: Annotated[
        str,
        typer.Option(help="Sampling preset: auto (the model's own, read from its files: distilled when its scheduler "
                     "config turns dynamic shifting off, ltx2.3 for an LTX-2.3 transformer, else ltx2), ltx2 / ltx2.3 "
                     "(LTX2Pipeline's schedule and guidance: 30 steps, CFG 3/7, STG 1, modality 3, rescale 0.7), "
                     "distilled (8 fixed sigmas, CFG 1: the paper's), plain (avctl's training shift, no guidance: "
                     "one pass per step). Explicit flags override it. See docs/sampler.md."),
    ] = "auto",
    guidance_scale: Annotated[float | None, typer.Option(help="Video CFG scale (1 = off).")] = None,
    audio_guidance_scale: Annotated[float | None, typer.Option(help="Audio CFG scale. Default: the preset's.")] = None,
    stg_scale: Annotated[float | None, typer.Option(help="Video spatio-temporal guidance scale (0 = off).")] = None,
    audio_stg_scale: Annotated[float | None, typer.Option(help="Audio STG scale (0 = off).")] = None,
    modality_scale: Annotated[
        float | None, typer.Option(help="Video modality-isolation guidance scale (1 = off).")] = None,
    audio_modality_scale: Annotated[float | None, typer.Option(help="Audio modality guidance scale (1 = off).")] = None,
    guidance_rescale: Annotated[float | None, typer.Option(help="Video guidance rescale, 0–1 (0 = off).")] = None,
    audio_guidance_rescale: Annotated[float | None, typer.Option(help="Audio guidance rescale, 0–1.")] = None,
    stg_blocks: Annotated[
        str | None, typer.Option(help="Transformer blocks STG perturbs, e.g. 29 or 28,29 (the model's needs "
                                 "perturbed_attn: true). Default: the preset's, at the same relative depth.")] = None,
    cross_timestep: Annotated[
        bool | None, typer.Option("--cross-timestep/--no-cross-timestep",
                                  help="Modulate audio↔video attention by the other stream's σ (LTX-2.3). Default: "
                                  "the preset's (ltx2.3 on), else the model's.")] = None,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt for CFG (LTX2Pipeline's default: empty).")] = "",
    cfg: Annotated[
        float | None, typer.Option(help="CFG scale for video and audio together (sets both guidance scales).")
    ] = None,
    two_stage: Annotated[
        bool, typer.Option(help="LTX-2's two-stage generation: the preset's sampling at half width and height, the "
                           "latent upsampler (x2), then 3 distilled steps with --distilled-lora, no guidance.")
    ] = False,
    upsampler: Annotated[
        Path | None, typer.Option(help="Latent upsampler folder for --two-stage (diffusers' LTX2LatentUpsamplerModel; "
                                  "a model folder with latent_upsampler/ works too).")] = None,
    distilled_lora: Annotated[
        str | None, typer.Option(help="PATH[@WEIGHT]: the distilled LoRA stage 2 adds (--two-stage).")] = None,
    save_latents: Annotated[
        Path | None, typer.Option(help="Also write the final latents as safetensors (keys video, audio; unpacked and "
                                  "denormalised, as LTX2Pipeline's output_type='latent').")] = None,
    width: Annotated[
        int | None,
        typer.Option(help="Output width. Default: --keep-video's, --from-video's or --image's, else the model's "
                     "default (never a control's: a control is resized to the output ÷ its LoRA's downscale)."),
    ] = None,
    height: Annotated[int | None, typer.Option(help="Output height. Default: as --width.")] = None,
    frames: Annotated[
        int | None, typer.Option(help="Output frames (1 + a multiple of 8). Default: the control's, cut to fit.")
    ] = None,
    fps: Annotated[float | None, typer.Option(help="Output frame rate. Default: the control's, else 24.")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Output mp4 (a sidecar .json is written next to it).")] = Path(
        "outputs/generation.mp4"
    ),
    preview: Annotated[
        bool, typer.Option(help="Also write OUT.preview.mp4 (control | output) and OUT.sheet.png (contact sheet).")
    ] = False,
    batch: Annotated[
        Path | None,
        typer.Option(help="JSONL file, one generation per row with any of prompt, lora, control, from_video, image, "
                     "keep_video, keep_audio, camera, depth, fov, strength, strength_ramp, seed, width, height, "
                     "frames, fps, out and the sampling options (steps, preset, guidance_scale, ...: any option of "
                     "this command but the model's); missing keys take the flags and --config. A .yaml file holds a "
                     "list of such rows. "
                     "The model loads once; a bad row is reported and the rest go on (exit 1 if any failed)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    vae_tiling: VaeTilingOpt = True,
    quantize: QuantizeOpt = None,
    text_encoder_8bit: TextEncoder8bitOpt = False,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML or JSON file of generate options (keys as the flags: prompt, lora, control, "
                     "from_video, width, steps, ...; see docs/generate.md); flags given override it. A sidecar "
                     "OUT.json that generate wrote works too: it redoes that generation."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate video + audio from a prompt, steered by control LoRAs and their controls. Each LoRA is sampled on
    the canvas layout it was trained on (its avctl.layout: parallel or side-by-side), recorded in the sidecar."""
    from avctl.generation import REQUEST_FIELDS, Hooks, build_request, generate_batch, generate_one

    renamed = {"out_path": "out"}

    def given(name: str) -> bool:  # on the command line (or from the environment), not a default: it overrides --config
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    flags = {renamed.get(k, k): v for k, v in ctx.params.items() if renamed.get(k, k) in REQUEST_FIELDS and given(k)}
    request = build_request(config, flags)

    hooks = Hooks(
        log=None if json_out else _line,
        warn=lambda where, msg: _line(f"avctl generate: {where + ': ' if where else ''}warning: {msg}"),
        done=None if json_out else (lambda where, side: _line(f"{where}: video {side['video']}")),
        failed=lambda where, msg: _line(f"avctl generate: {where}: error: {msg}"),
    )
    with _Bars(json_out) as bars:
        hooks.progress = lambda label: bars.add(label)
        if batch is None:
            sidecar = generate_one(request, overwrite, hooks)
        else:
            results = generate_batch(batch, request, overwrite, hooks)
    if batch is None:
        if json_out:
            _emit(sidecar)
        else:
            size = sidecar["size"]
            err.print(f"video: {sidecar['video']}  ({size['frames']} frames {size['width']}x{size['height']} @ "
                      f"{size['fps']:g} fps, audio {sidecar['audio_sample_rate']} Hz, {sidecar['steps']} steps "
                      f"{sidecar['schedule']}, preset {sidecar['sampler']['preset']}, "
                      f"{sidecar['timings']['total_s']:.1f} s)")
            if request.preview:
                err.print(f"preview: {sidecar['preview']}  sheet: {sidecar['sheet']}")
        return
    failed = sum("error" in r for r in results)
    if json_out:
        _emit(results)
    else:
        err.print(f"batch {batch}: {len(results) - failed} written, {failed} failed")
    if failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ eval
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@command("eval")
def eval_cmd(
    modality: Annotated[str | None, typer.Argument(help="Modality of the control (for one pair).")] = None,
    control: Annotated[Path | None, typer.Option(help="Control video (one pair).")] = None,
    video: Annotated[Path | None, typer.Option(help="Generated video (one pair).")] = None,
    mask: Annotated[Path | None, typer.Option(help="Inpainting mask video/image (white = hole).")] = None,
    source: Annotated[
        Path | None,
        typer.Option(help="The clip the control was extracted from (tracks: end-point error; canny: edge_f1_plain, "
                     "F1 against its plain 1-px edges at the output's size). Every fidelity metric also gets "
                     "<metric>_skill: 0 = chance (mismatched or mirrored controls), 1 = perfect; see docs/eval.md."),
    ] = None,
    clip_model: Annotated[
        Path | None,
        typer.Option(help="Local CLIP (background consistency) or DINO/ViT (subject consistency) transformers folder."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="depth / pose: the extractor's weights (as for `prepare --weights`), to re-estimate the "
                     "control on the output. Default: $AVCTL_HOME/weights, then the local hub cache."),
    ] = None,
    brisque_model: Annotated[
        Path | None,
        typer.Option(help="Folder with brisque_model_live.yml and brisque_range_live.yml: adds BRISQUE image "
                     "quality (needs opencv-contrib-python)."),
    ] = None,
    camera: Annotated[
        str | None,
        typer.Option(help="camera-image / camera-video: the PRESET[@STRENGTH] or trajectory .json the video was "
                     "generated with (rotation error; --runs reads it from the sidecar)."),
    ] = None,
    fov: Annotated[float, typer.Option(help="Vertical FOV (degrees) of frame 0 for a --camera preset.")] = 50.0,
    runs: Annotated[
        Path | None, typer.Option(help="Folder of generations: every mp4 with the .json sidecar `generate` writes.")
    ] = None,
    sheet: Annotated[
        Path | None,
        typer.Option(help="Write a PNG contact sheet: each control, the outputs made from it, the metrics."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure control fidelity (edge F1, masked PSNR/SSIM, depth / pose agreement, track error, …) and temporal
    quality (warp error, flicker, motion smoothness, dynamic degree). Metrics whose models are not installed are
    listed as not available, never guessed."""
    from avctl.metrics import contact_sheet, evaluate_pair, evaluate_runs, sheet_rows

    if runs is not None:
        if modality or control or video:
            raise BadUsage("use either --runs DIR or MODALITY --control --video, not both")
        if not runs.is_dir():
            raise BadInput(f"{runs}: not a folder")
        results = evaluate_runs(runs, clip_model, weights, brisque_model)
        if not any("metrics" in r for r in results):
            raise BadInput(f"{runs}: no generation with a readable .json sidecar and control to evaluate")
    else:
        if not (modality and control and video):
            raise BadUsage("give MODALITY --control PATH --video PATH (or --runs DIR)")
        results = [evaluate_pair(modality, control, video, mask, source=source, clip_model=clip_model,
                                 weights=weights, brisque_model=brisque_model, camera=camera, fov=fov)]
    if sheet is not None:
        rows, labels = sheet_rows(results)
        captions = [f"{label}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["metrics"].items())
                    for label, r in labels]
        contact_sheet(sheet, rows, caption=" | ".join(captions))
    if json_out:
        _emit(results if runs is not None else results[0])
        return
    table = Table(title="avctl eval")
    table.add_column("video")
    table.add_column("metric")
    table.add_column("value")
    for r in results:
        name = Path(r["video"]).name
        if "skipped" in r:
            table.add_row(name, "skipped", r["skipped"])
            continue
        for k, v in r["metrics"].items():
            table.add_row(name, k, _fmt(v))
        for k, reason in r["not_available"].items():
            table.add_row(name, k, f"not available ({reason})")
        if "sheet" in r:
            table.add_row(name, "contact sheet", r["sheet"])
    out.print(table)
    if sheet is not None:
        err.print(f"contact sheet: {sheet}")


# ------------------------------------------------------------------------------------------------ bench
def _csv(text: str, kind: type) -> list[Any]:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BadUsage(f"{text!r}: expected a comma-separated list of numbers") from exc


@command("bench")
def bench_cmd(
    model: ModelOpt = None,
    downscale: Annotated[str, typer.Option(help="Reference downscales to compare, e.g. 1,2,4.")] = "1,2,4",
    layout: Annotated[
        str,
        typer.Option(help="Canvas layout of the reference: parallel, or side-by-side (to the target's right; "
                     "with --downscale 1)."),
    ] = "parallel",
    strength: Annotated[str, typer.Option(help="Strengths to compare, e.g. 1,0.5.")] = "1,0.5",
    frames: Annotated[
        int | None, typer.Option(help="Frames. Default: 17 on tiny; otherwise 121 on a GPU, 25 on CPU.")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Width. Default: 256 on tiny, 768 otherwise.")] = None,
    height: Annotated[int | None, typer.Option(help="Height. Default: 256 on tiny, 512 otherwise.")] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per setting, round-robin (median reported).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps per setting.")] = 2,
    memory: Annotated[bool, typer.Option(help="Peak memory per setting (on CPU: one subprocess each).")] = True,
    diffusers: Annotated[
        bool, typer.Option(help="Also time diffusers' LTX2InContextPipeline attention path at strength 1 and 0.")
    ] = True,
    plot: Annotated[Path | None, typer.Option(help="Write latency vs downscale as a PNG.")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="Load the model in bf16, fp16 or fp32 (default: the model's own: bf16 on a GPU and for "
                     "shape presets, else fp32 on CPU). bf16 on a CPU with AMX runs real widths ~5x faster."),
    ] = None,
    prepare: Annotated[
        str | None,
        typer.Option(help="Instead: time MODALITY's prepare extractor on 512×512 frames (frames/s); no model needed."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Time one denoising step per reference downscale and strength (all in one process, so ratios are fair), with
    peak memory, the strength bias size, and the step ratio predicted by a FLOP count of the real forward (on a
    meta-device copy), beside the plain token-count ratio."""
    import platform

    from avctl.bench import bench_model, rows_to_dicts
    from avctl.bench import plot as plot_bench

    if prepare is not None:
        from avctl.modalities.base import get_modality
        from avctl.prepare import prepare_throughput

        fps_rate = prepare_throughput(get_modality(prepare), frames=frames or 49, size=width or 512)
        result = {"modality": prepare, "size": width or 512, "frames": frames or 49, "frames_per_s": fps_rate,
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
        if json_out:
            _emit(result)
        else:
            out.print(f"prepare {prepare}: {fps_rate:.1f} frames/s at {result['size']}×{result['size']} "
                      f"({result['machine']})")
        return
    with _progress(json_out) as progress:
        task = progress.add_task("bench", total=None, info="")
        header, rows = bench_model(
            model, _csv(downscale, int), _csv(strength, float), width=width, height=height, frames=frames,
            steps=steps, warmup=warmup, measure_memory=memory, compare_diffusers=diffusers, layout=layout,
            dtype=dtype, progress=lambda d, t: progress.update(task, completed=d, total=t))
    if plot is not None:
        plot_bench(rows, plot, header)
    if json_out:
        _emit({"setup": header, "rows": rows_to_dicts(rows)})
        return
    table = Table(title=f"avctl bench — {header}")
    for col in ("path", "downscale", "strength", "tokens", "step ms", "peak MiB", "bias bytes", "GFLOP", "vs no-ref",
                "vs 1×", "FLOPs vs 1×", "tokens vs 1×", "avctl/diffusers"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.path,
            "none" if r.downscale is None else f"{r.downscale}×",
            "-" if r.strength is None else f"{r.strength:g}",
            str(r.tokens), f"{r.step_latency_s * 1000:.1f}",
            "-" if r.peak_mem_bytes is None else f"{r.peak_mem_bytes / 2**20:.0f}", str(r.bias_bytes),
            f"{r.predicted_flops / 1e9:.1f}",
            f"{r.ratio_vs_noref:.2f}", "-" if r.ratio_vs_1x is None else f"{r.ratio_vs_1x:.2f}",
            "-" if r.predicted_ratio_vs_1x is None else f"{r.predicted_ratio_vs_1x:.2f}",
            "-" if r.token_ratio_vs_1x is None else f"{r.token_ratio_vs_1x:.2f}",
            "-" if r.avctl_over_diffusers is None else f"{r.avctl_over_diffusers:.2f}",
        )
    out.print(table)
    if plot is not None:
        err.print(f"plot: {plot}")


# ------------------------------------------------------------------------------------------------ lora
lora_app = typer.Typer(help="Check and convert LoRA files (ComfyUI / ltx-trainer, diffusers, PEFT, kohya layouts).",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(lora_app, name="lora")


@command("inspect", lora_app, "lora inspect")
def lora_inspect_cmd(
    path: Annotated[Path, typer.Argument(help="A .safetensors LoRA file.")], json_out: JsonOpt = False
) -> None:
    """Show a LoRA file's key format, modules per group, rank, dtype and metadata."""
    from avctl.lora import inspect_lora

    info = inspect_lora(path)
    if json_out:
        _emit(info)
        return
    table = Table(title=str(path), show_header=False)
    hint = "" if info["format"] == "comfyui" else "  (avctl lora convert → comfyui)"
    table.add_row("format", info["format"] + hint)
    table.add_row("modules", str(info["modules"]))
    table.add_row("groups", ", ".join(f"{g}: {n}" for g, n in info["groups"].items()))
    table.add_row("rank", ", ".join(map(str, info["ranks"])))
    table.add_row("dtype", ", ".join(info["dtypes"]))
    table.add_row("reference_downscale_factor", str(info["reference_downscale_factor"]))
    for k, v in sorted(info["metadata"].items()):
        if k != "reference_downscale_factor":
            table.add_row(k, v if len(v) < 80 else v[:77] + "...")
    out.print(table)


@command("convert", lora_app, "lora convert")
def lora_convert_cmd(
    src: Annotated[Path, typer.Argument(help="LoRA in diffusers (transformer.), PEFT or kohya layout.")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors in the ComfyUI / ltx-trainer layout.")],
    downscale: Annotated[int | None, typer.Option(help="Set reference_downscale_factor (else kept).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Rewrite a LoRA as `diffusion_model.<module>.lora_A/B.weight` (bf16, alpha folded in), keeping its metadata."""
    from avctl.lora import convert_lora

    if dst.exists() and not overwrite:
        raise BadInput(f"{dst}: exists; pass --overwrite")
    result = convert_lora(src, dst, downscale)
    if json_out:
        _emit(result)
    else:
        err.print(f"{result['source_format']} → comfyui: {dst} ({result['modules']} modules)")


# ------------------------------------------------------------------------------------------------ entry point
def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
