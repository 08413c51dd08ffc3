"""The `avctl` command line: one thin function per subcommand (parse, call the library, print or --json).

Exit codes: 0 ok, 1 failed (nothing or not everything was done), 2 bad usage. Library errors arrive as
`AvctlError` and leave here as one line on stderr — never a traceback for bad input. Progress goes to stderr, data
(--json) to stdout, so scripts can pipe it.
"""

from __future__ import annotations

import functools
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

from avctl.errors import AvctlError, BadInput, BadUsage

app = typer.Typer(
    name="avctl",
    help="Train and use audio-visual control LoRAs (AVControl) on LTX-2.\n\n"
    "Chain: prepare (videos → dataset) → train (dataset → LoRA) → generate (prompt + control → mp4).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="LTX-2 weights: a diffusers-format directory, a hub id already in the local cache, or 'tiny' "
        "(built-in random-init test model). Default: $AVCTL_MODEL, else Lightricks/LTX-2.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


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
        disable=os.environ.get("AVCTL_NO_PROGRESS") == "1",
    )


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
    return model or os.environ.get("AVCTL_MODEL") or None  # None: the backbone's default (LTX-2)


def _load_backbone(model: str | None) -> Any:
    """Load the backbone for a command. The tiny model's ops are too small to gain from threads — on 2 shared
    cores extra threads made its steps ~10× slower — so it runs on one unless OMP_NUM_THREADS says otherwise."""
    import torch

    from avctl.backbone import load_backbone

    name = _model_name(model)
    if name == "tiny" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return load_backbone(name)


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

        return (group or app).command(name)(run)

    return wrap


# ------------------------------------------------------------------------------------------------ modalities
@command("modalities")
def modalities_cmd(json_out: JsonOpt = False) -> None:
    """List the registered control modalities and their training defaults (the paper's Table 5)."""
    from modalities.base import all_modalities

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
    inputs: Annotated[list[Path], typer.Argument(help="Video files or folders (searched recursively).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Dataset folder. Default: datasets/<modality>.")] = None,
    bucket: Annotated[
        str | None,
        typer.Option(help="WxHxF size every clip is resized/cropped/cut to. Default: the model's usual size."),
    ] = None,
    caption: Annotated[str | None, typer.Option(help="Caption for clips without a sidecar <stem>.txt.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for random controls (masks, degradations).")] = 42,
    workers: Annotated[int, typer.Option(min=1, help="Clips processed in parallel; results do not depend on it.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Redo finished samples / replace a dataset of another kind.")] = False,
    model: ModelOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Extract controls from videos into an ltx-trainer-compatible dataset (dataset.jsonl + media). Needs no model
    weights. Rerunning skips finished clips."""
    from avctl.media import Bucket
    from avctl.prepare import default_bucket, prepare
    from modalities.base import get_modality

    mod = get_modality(modality)
    b = Bucket.parse(bucket) if bucket else default_bucket(model or os.environ.get("AVCTL_MODEL"), mod.downscale)
    target = out_dir or Path("datasets") / modality
    with _progress(json_out) as progress:
        task = None

        def tick(done: int, total: int) -> None:
            nonlocal task
            if task is None:  # created on the first report, so a refused run shows no empty bar
                task = progress.add_task(f"prepare {modality}", total=total, info="")
            progress.update(task, completed=done, total=total)

        summary = prepare(mod, list(inputs), target, b, caption, seed=seed, workers=workers, overwrite=overwrite,
                          progress=tick)
    data = summary.to_dict()
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
        err.print(f"dataset: {target / 'dataset.jsonl'}")
    if not data.get("done") and not data.get("existing"):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ train
def _load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BadInput(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            raise BadInput(f"{path}: use a .yaml, .yml or .toml config file")
    except (ValueError, ImportError) as exc:
        raise BadInput(f"{path}: cannot parse ({exc})") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the config must be a mapping of option names to values")
    return data


@command("train")
def train_cmd(
    modality: Annotated[str, typer.Argument(help="Modality name (see `avctl modalities`).")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset. Default: datasets/<modality>.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder. Default: runs/<modality>.")] = None,
    model: ModelOpt = None,
    steps: Annotated[int | None, typer.Option(help="Absolute target step. Default: the modality's.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank (alpha = rank). Default: the modality's.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (linear decay to 1e-5). Default 1e-4.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step. Default 1.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps. Default 1.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for σ, noise and data order. Default 42.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file with any of these options.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/state when its configuration matches.")] = True,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint + resume state every N steps.")] = None,
    keep_last: Annotated[int | None, typer.Option(help="Checkpoints kept.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a control LoRA on a prepared dataset: frozen LTX-2, LoRA on the modality's modules, loss on target
    tokens only. Writes OUT/lora.safetensors (ComfyUI / ltx-trainer format), checkpoints/, state/, metrics.jsonl."""
    from pydantic import ValidationError

    from avctl.cache import load_samples
    from avctl.dataset import check_dataset, load_manifest
    from avctl.train import TrainConfig, train
    from modalities.base import get_modality

    file_values = _load_config_file(config) if config else {}
    cli_values = {
        "modality": modality, "data": data, "out": out_dir, "model": model, "steps": steps, "rank": rank, "lr": lr,
        "batch_size": batch_size, "grad_accum": grad_accum, "seed": seed, "save_every": save_every,
        "keep_last": keep_last,
    }
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    try:
        cfg = TrainConfig(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise BadUsage(f"train option {where!r}: {first['msg']}") from exc
    mod = get_modality(cfg.modality)
    cfg.data = cfg.data or Path("datasets") / mod.name
    cfg.out = cfg.out or Path("runs") / mod.name
    cfg.model = _model_name(cfg.model)

    info, rows = load_manifest(cfg.data)
    check_dataset(info, mod)
    backbone = _load_backbone(cfg.model)
    with _progress(json_out) as progress:
        task = progress.add_task("encode", total=len(rows), info="")
        samples, _ = load_samples(
            backbone, cfg.data, info, rows, progress=lambda d, t: progress.update(task, completed=d, total=t)
        )
        total = cfg.steps or mod.steps
        task = progress.add_task(f"train {mod.name}", total=total, info="")

        def tick(step: int, total_steps: int, row: dict[str, float]) -> None:
            progress.update(task, completed=step, total=total_steps, info=f"loss {row['loss']:.4f}")

        model_meta = {"model_id": backbone.model_id, "config_hash": backbone.config_hash()}
        result = train(cfg, mod, samples, backbone.transformer, model_meta, resume=resume, progress=tick)
    if json_out:
        _emit(result.to_dict())
    else:
        err.print(f"LoRA: {result.lora_path}  (steps {result.resumed_from}→{result.steps}, "
                  f"loss {result.to_dict()['first_loss']:.4f} → {result.to_dict()['last_loss']:.4f})")


# ------------------------------------------------------------------------------------------------ generate
def _parse_ramp(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError as exc:
        raise BadUsage(f"--strength-ramp {text!r}: use START:END, e.g. 1:0") from exc
    if not (0 <= start <= 1 and 0 <= end <= 1):
        raise BadUsage("--strength-ramp values must lie in [0, 1]")
    return start, end


def _read_strength_map(path: Path) -> Any:
    import cv2
    import numpy as np

    from avctl import media

    if not path.is_file():
        raise BadInput(f"{path}: strength map not found")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise BadInput(f"{path}: not a readable image")
        return img.astype(np.float32) / 255.0
    frames = media.read_video(path).frames
    return frames.mean(axis=-1).astype(np.float32) / 255.0  # [F, H, W] grey, white = 1


@command("generate")
def generate_cmd(
    prompt: Annotated[str, typer.Option(help="Text prompt.")],
    lora: Annotated[
        list[str] | None,
        typer.Option(help="NAME_OR_PATH[@WEIGHT], repeatable. NAME resolves to runs/NAME/lora.safetensors, then "
                     "$AVCTL_HOME/runs/NAME/lora.safetensors. @WEIGHT scales the LoRA (default 1)."),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(help="[NAME=]PATH control video per LoRA (by LoRA name, or in order)."),
    ] = None,
    strength: Annotated[float, typer.Option(help="Attention strength to the reference, 0–1 (1 = full).")] = 1.0,
    strength_map: Annotated[
        Path | None, typer.Option(help="Grey image or video, white = full strength, mapped onto the reference.")
    ] = None,
    strength_ramp: Annotated[str | None, typer.Option(help="START:END linear strength over time, e.g. 1:0.")] = None,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 42,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 30,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale (1.0 = off, the paper's setting).")] = 1.0,
    width: Annotated[int | None, typer.Option(help="Output width. Default: the control's.")] = None,
    height: Annotated[int | None, typer.Option(help="Output height. Default: the control's.")] = None,
    frames: Annotated[int | None, typer.Option(help="Output frames. Default: the control's.")] = None,
    fps: Annotated[float | None, typer.Option(help="Output frame rate. Default: the control's, else 24.")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Output mp4 (a sidecar .json is written next to it).")] = Path(
        "outputs/generation.mp4"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate video + audio from a prompt, steered by control LoRAs and their controls."""
    from avctl import media
    from avctl.sample import LoraUse, generate, open_lora

    if out_path.exists() and not overwrite:
        raise BadInput(f"{out_path}: exists; pass --overwrite or choose another --out")
    if out_path.suffix.lower() != ".mp4":
        raise BadUsage(f"--out {out_path}: must end in .mp4")
    uses = []
    for arg in lora or []:
        lf, scale = open_lora(arg)
        uses.append(LoraUse(lf, scale))
    names = [Path(a).stem if Path(a).suffix else a.split("@")[0] for a in (lora or [])]
    size_from: Any = None
    for i, item in enumerate(control or []):
        name, sep, path_text = item.partition("=")
        if not sep:
            name, path_text = None, item
        if name is not None:
            if name not in names:
                raise BadUsage(f"--control {item!r}: no --lora named {name!r} (LoRAs: {', '.join(names)})")
            idx = names.index(name)
        else:
            idx = i
        if idx >= len(uses):
            raise BadUsage(f"--control {item!r} has no LoRA to go with; give one --lora per control")
        clip = media.read_video(Path(path_text))
        uses[idx].control = clip.frames
        size_from = size_from or clip
    w = width or (size_from.frames.shape[2] if size_from else None)
    h = height or (size_from.frames.shape[1] if size_from else None)
    f = frames or (size_from.frames.shape[0] if size_from else None)
    rate = fps or (size_from.fps if size_from else 24.0)
    if w is None or h is None or f is None:
        raise BadUsage("give --width, --height and --frames (or a --control to take them from)")
    smap = _read_strength_map(strength_map) if strength_map else None
    backbone = _load_backbone(model)
    with _progress(json_out) as progress:
        task = progress.add_task("generate", total=steps, info="")
        result = generate(
            backbone, prompt, uses, width=w, height=h, frames=f, fps=rate, strength=strength, strength_map=smap,
            strength_ramp=_parse_ramp(strength_ramp), steps=steps, cfg=cfg, seed=seed,
            progress=lambda d, t: progress.update(task, completed=d),
        )
    media.write_video(out_path, result.frames, result.fps, audio=result.audio, sample_rate=result.sample_rate)
    sidecar = {
        "video": str(out_path),
        "prompt": prompt,
        "modality": [u.lora.avctl.get("modality") for u in uses],
        "loras": [{"path": str(u.lora.path), "scale": u.scale, "downscale": u.lora.downscale} for u in uses],
        "control": list(control or []),
        "strength": strength,
        "strength_map": str(strength_map) if strength_map else None,
        "strength_ramp": strength_ramp,
        "seed": seed,
        "steps": steps,
        "cfg": cfg,
        "model": backbone.model_id,
        "size": {"width": w, "height": h, "frames": f, "fps": rate},
        "audio_sample_rate": result.sample_rate,
        "timings": result.timings,
    }
    side_path = out_path.with_suffix(".json")
    tmp = side_path.with_name(f".{side_path.name}.tmp")
    tmp.write_text(json.dumps(sidecar, indent=2))
    os.replace(tmp, side_path)
    if json_out:
        _emit(sidecar)
    else:
        err.print(f"video: {out_path}  ({f} frames {w}x{h} @ {rate:g} fps, audio {result.sample_rate} Hz, "
                  f"{result.timings['total_s']:.1f} s)")


# ------------------------------------------------------------------------------------------------ eval
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@command("eval")
def eval_cmd(
    modality: Annotated[str | None, typer.Argument(help="Modality of the control (for one pair).")] = None,
    control: Annotated[Path | None, typer.Option(help="Control video (one pair).")] = None,
    video: Annotated[Path | None, typer.Option(help="Generated video (one pair).")] = None,
    mask: Annotated[Path | None, typer.Option(help="Inpainting mask video/image (white = hole).")] = None,
    runs: Annotated[
        Path | None, typer.Option(help="Folder of generations: every mp4 with the .json sidecar `generate` writes.")
    ] = None,
    sheet: Annotated[Path | None, typer.Option(help="Write a PNG contact sheet (control | output, metrics).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure control fidelity (edge F1, masked PSNR/SSIM, …) and temporal quality (warp error, flicker, motion
    smoothness, dynamic degree). Metrics whose models are not installed are listed as not available."""
    from avctl import media
    from avctl.metrics import contact_sheet, evaluate_pair, evaluate_runs

    if runs is not None:
        if modality or control or video:
            raise BadUsage("use either --runs DIR or MODALITY --control --video, not both")
        if not runs.is_dir():
            raise BadInput(f"{runs}: not a folder")
        results = evaluate_runs(runs)
        if not any("metrics" in r for r in results):
            raise BadInput(f"{runs}: no generation with a readable .json sidecar and control to evaluate")
    else:
        if not (modality and control and video):
            raise BadUsage("give MODALITY --control PATH --video PATH (or --runs DIR)")
        results = [evaluate_pair(modality, control, video, mask)]
    if sheet is not None:
        rows: list[tuple[str, Any]] = []
        captions = []
        for r in results:
            if "metrics" not in r:
                continue
            if not rows:
                rows.append(("control", media.read_video(Path(r["control"])).frames))
            label = Path(r["video"]).stem + (f" s={r['strength']}" if r.get("strength") is not None else "")
            rows.append((label, media.read_video(Path(r["video"])).frames))
            captions.append(label + ": " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["metrics"].items()))
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
    strength: Annotated[str, typer.Option(help="Strengths to compare, e.g. 1,0.5.")] = "1,0.5",
    frames: Annotated[int | None, typer.Option(help="Frames. Default: 17 on tiny, 121 otherwise.")] = None,
    width: Annotated[int | None, typer.Option(help="Width. Default: 256 on tiny, 768 otherwise.")] = None,
    height: Annotated[int | None, typer.Option(help="Height. Default: 256 on tiny, 512 otherwise.")] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per setting (median reported).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps per setting.")] = 2,
    memory: Annotated[bool, typer.Option(help="Peak memory per setting (on CPU: one subprocess each).")] = True,
    diffusers: Annotated[
        bool, typer.Option(help="Also time diffusers' LTX2InContextPipeline attention path at strength 1 and 0.")
    ] = True,
    plot: Annotated[Path | None, typer.Option(help="Write latency vs downscale as a PNG.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Time one denoising step per reference downscale and strength (all in one process, so ratios are fair), with
    peak memory, the strength bias size, and the ratio predicted from token counts."""
    import platform

    import torch

    from avctl.bench import plot as plot_bench
    from avctl.bench import rows_to_dicts, run_bench

    name = _model_name(model)
    tiny = name == "tiny"
    w, h, f = width or (256 if tiny else 768), height or (256 if tiny else 512), frames or (17 if tiny else 121)
    backbone = _load_backbone(name)
    with _progress(json_out) as progress:
        task = progress.add_task("bench", total=None, info="")
        rows = run_bench(backbone, _csv(downscale, int), _csv(strength, float), w, h, f, steps=steps,
                         warmup=warmup, measure_memory=memory, compare_diffusers=diffusers,
                         progress=lambda d, t: progress.update(task, completed=d, total=t))
    device = str(backbone.device)
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    header = f"{backbone.model_id} {w}x{h}x{f}, {device}, {torch.get_num_threads()} threads, {platform.machine()}"
    if plot is not None:
        plot_bench(rows, plot, header)
    if json_out:
        _emit({"setup": header, "rows": rows_to_dicts(rows)})
        return
    table = Table(title=f"avctl bench — {header}")
    for col in ("path", "downscale", "strength", "tokens", "step ms", "peak MiB", "bias bytes", "vs no-ref",
                "vs 1×", "predicted vs 1×"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.path,
            "none" if r.downscale is None else f"{r.downscale}×",
            "-" if r.strength is None else f"{r.strength:g}",
            str(r.tokens), f"{r.step_latency_s * 1000:.1f}",
            "-" if r.peak_mem_bytes is None else f"{r.peak_mem_bytes / 2**20:.0f}", str(r.bias_bytes),
            f"{r.ratio_vs_noref:.2f}", "-" if r.ratio_vs_1x is None else f"{r.ratio_vs_1x:.2f}",
            "-" if r.predicted_ratio_vs_1x is None else f"{r.predicted_ratio_vs_1x:.2f}",
        )
    out.print(table)
    if plot is not None:
        err.print(f"plot: {plot}")


# ------------------------------------------------------------------------------------------------ lora
lora_app = typer.Typer(help="Check and convert LoRA files (ComfyUI / ltx-trainer, diffusers, PEFT, kohya layouts).",
                       no_args_is_help=True)
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
