"""Config files for `prepare` and `train`: nested sections named like ltx-trainer's, `extra="forbid"` everywhere.

One file serves the whole chain (`configs/<modality>.yaml`): `prepare` reads `modality`, `model`, `reference`,
`data`, `prepare` and `seed`; `train` reads everything but `prepare`. Command-line flags override the file. Keys
that ltx-trainer also has keep its names, so an ltx-trainer config is read as it is: its keys are mapped, the ones
avctl does not use are named in one warning (`LTX_UNUSED`), and unknown keys are refused. The older flat form
(TrainConfig's own names: `lr`, `grad_accum`, ...) is still read, through `FLAT_KEYS`. See docs/configs.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avctl.errors import BadInput, BadUsage

if TYPE_CHECKING:
    from avctl.modalities.base import Modality


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    """The base weights (`--model`): a diffusers-format folder, a hub id in the local cache, pocket, tiny, shape."""

    model_path: str | None = None
    training_mode: Literal["lora"] = "lora"  # ltx-trainer's; avctl trains LoRAs only
    load_checkpoint: str | None = None  # ltx-trainer's; must be empty: avctl resumes from output_dir/state


class LoraSection(Section):
    rank: int | None = Field(default=None, gt=0)
    alpha: int | None = Field(default=None, gt=0)  # must equal rank: avctl trains alpha = rank
    dropout: float = Field(default=0.0, ge=0.0, le=1.0)  # must be 0: avctl's LoRA has no dropout
    targets: list[str] | None = None  # avctl's module groups (V.SA, V.CA, V.FF, A.SA, A.CA, A.FF, A→V, V→A)
    target_modules: list[str] | None = None  # ltx-trainer / PEFT names (attn1.to_q, ff.net.2, ...), whole groups


class ReferenceSection(Section):
    layout: Literal["parallel", "side-by-side"] | None = None
    downscale_factor: int | None = Field(default=None, gt=0)  # must be the modality's (Table 5)


class OptimizationSection(Section):
    learning_rate: float | None = Field(default=None, gt=0)
    lr_end: float | None = Field(default=None, ge=0)  # the linear schedule's last learning rate
    steps: int | None = Field(default=None, gt=0)  # absolute target step
    batch_size: int | None = Field(default=None, gt=0)
    gradient_accumulation_steps: int | None = Field(default=None, gt=0)
    max_grad_norm: float | None = Field(default=None, gt=0)
    optimizer_type: Literal["adamw", "adamw8bit"] | None = None
    scheduler_type: Literal["linear", "constant"] | None = None  # constant: lr_end = learning_rate
    weight_decay: float | None = Field(default=None, ge=0)
    loraplus_lr_ratio: float | None = Field(default=None, ge=1.0)
    enable_gradient_checkpointing: bool | None = None


class AccelerationSection(Section):
    mixed_precision_mode: Literal["bf16", "fp32", "no"] | None = None  # the frozen base's dtype; "no" = fp32
    quantization: Literal["none", "int8", "fp8", "int8-quanto", "fp8-quanto"] | None = None
    load_text_encoder_in_8bit: bool | None = None
    strategy: Literal["ddp", "fsdp"] | None = None  # several ranks


class DataSection(Section):
    preprocessed_data_root: str | None = None  # a dataset folder written by `avctl prepare`
    num_dataloader_workers: int | None = Field(default=None, ge=0)
    prefetch_factor: int | None = Field(default=None, gt=0)


class ValidationSection(Section):
    interval: int | None = Field(default=None, gt=0)  # steps between samples of the first manifest row


class CheckpointsSection(Section):
    interval: int | None = Field(default=None, gt=0)
    keep_last_n: int | None = Field(default=None, ge=1)
    no_resume: bool | None = None  # true: start over even when output_dir/state matches


class LoggingSection(Section):
    tensorboard: bool | None = None


class PrepareSection(Section):
    bucket: str | None = None  # WxHxF
    caption: str | None = None
    workers: int | None = Field(default=None, ge=1)
    weights: str | None = None
    backend: str | None = None
    speakers: str | None = None
    line_width: int | None = Field(default=None, gt=0)
    precompute: bool | None = None


class AvctlConfig(Section):
    """A whole config file, after ltx-trainer's unused keys are set aside."""

    modality: str | None = None
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    optimization: OptimizationSection = Field(default_factory=OptimizationSection)
    acceleration: AccelerationSection = Field(default_factory=AccelerationSection)
    data: DataSection = Field(default_factory=DataSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    checkpoints: CheckpointsSection = Field(default_factory=CheckpointsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    prepare: PrepareSection = Field(default_factory=PrepareSection)
    seed: int | None = None
    output_dir: str | None = None


#: ltx-trainer keys avctl reads and does not use, by section; a whole-section entry lists the keys it may hold.
#: They are named in one warning line; any other key is refused.
LTX_UNUSED: dict[str, tuple[str, ...]] = {
    "model": ("text_encoder_path", "video_vae_path", "audio_vae_path"),
    "optimization": ("scheduler_params",),
    "acceleration": ("offload_optimizer_during_validation",),
    "validation": ("samples", "prompts", "negative_prompt", "images", "keyframe_images", "keyframe_frame_indices",
                   "reference_videos", "reference_downscale_factor", "video_dims", "frame_rate", "seed",
                   "inference_steps", "guidance_scale", "stg_scale", "stg_blocks", "stg_mode", "generate_audio",
                   "generate_video", "skip_initial_validation", "include_reference_in_output",
                   "videos_per_prompt"),
    "checkpoints": ("precision", "save_training_state"),
}
#: Whole ltx-trainer sections avctl does not use (the modality decides the strategy; avctl logs to metrics.jsonl
#: and tensorboard), with the keys each may hold.
LTX_UNUSED_SECTIONS: dict[str, tuple[str, ...]] = {
    "training_strategy": ("name", "first_frame_conditioning_p", "reference_latents_dir", "with_audio",
                          "audio_latents_dir", "video", "audio"),
    "flow_matching": ("timestep_sampling_mode", "timestep_sampling_params"),
    "hub": ("push_to_hub", "hub_model_id"),
    "wandb": ("enabled", "project", "entity", "tags", "log_validation_videos"),
}

#: The flat form (TrainConfig's field names, the older `train --config`) → its place in the nested form.
FLAT_KEYS: dict[str, tuple[str, ...]] = {
    "modality": ("modality",),
    "data": ("data", "preprocessed_data_root"),
    "out": ("output_dir",),
    "model": ("model", "model_path"),
    "steps": ("optimization", "steps"),
    "rank": ("lora", "rank"),
    "targets": ("lora", "targets"),
    "layout": ("reference", "layout"),
    "lr": ("optimization", "learning_rate"),
    "lr_end": ("optimization", "lr_end"),
    "batch_size": ("optimization", "batch_size"),
    "grad_accum": ("optimization", "gradient_accumulation_steps"),
    "seed": ("seed",),
    "save_every": ("checkpoints", "interval"),
    "keep_last": ("checkpoints", "keep_last_n"),
    "max_grad_norm": ("optimization", "max_grad_norm"),
    "gradient_checkpointing": ("optimization", "enable_gradient_checkpointing"),
    "dtype": ("acceleration", "mixed_precision_mode"),
    "loader_workers": ("data", "num_dataloader_workers"),
    "prefetch_factor": ("data", "prefetch_factor"),
    "weight_decay": ("optimization", "weight_decay"),
    "optimizer": ("optimization", "optimizer_type"),
    "loraplus_lr_ratio": ("optimization", "loraplus_lr_ratio"),
    "validate_every": ("validation", "interval"),
    "tensorboard": ("logging", "tensorboard"),
    "quantize": ("acceleration", "quantization"),
    "text_encoder_8bit": ("acceleration", "load_text_encoder_in_8bit"),
    "strategy": ("acceleration", "strategy"),
}

_QUANTIZATION = {"none": "none", "int8": "int8", "fp8": "fp8", "int8-quanto": "int8", "fp8-quanto": "fp8"}
_DTYPE = {"bf16": "bf16", "fp32": "fp32", "no": "fp32"}
# Shaped like an environment variable (AVCTL_MODEL, HF_HOME): those are read from the environment only.
_ENV_LIKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
_ENV_SECTIONS = {"env", "environ", "environment"}


@dataclass
class FileOptions:
    """What a config file asks of one command, as that command's option names."""

    values: dict[str, Any]
    unused: list[str] = field(default_factory=list)  # ltx-trainer keys avctl does not use, dotted
    resume: bool | None = None  # train only: checkpoints.no_resume inverted

    def warning(self, path: Path) -> str | None:
        """The one warning line naming the unused keys, or None."""
        if not self.unused:
            return None
        by_section: dict[str, list[str]] = {}
        for name in self.unused:
            section, _, key = name.partition(".")
            by_section.setdefault(section, []).extend([key] if key else [])
        names = [f"{s}.{{{', '.join(keys)}}}" if len(keys) > 1 else f"{s}.{keys[0]}" if keys else s
                 for s, keys in by_section.items()]
        return f"{path}: ltx-trainer keys avctl does not use (ignored): {'; '.join(names)}"


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a .yaml/.yml/.toml file holds; BadInput naming the file when it is missing or unreadable."""
    path = Path(path)
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


def _refuse_env_keys(data: Any, path: Path, where: str = "") -> None:
    """Environment variables (declared in avctl.env, listed in `--help`) are never set from a config file."""
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{where}{key}"
            if isinstance(key, str) and (_ENV_LIKE.match(key) or key.lower() in _ENV_SECTIONS):
                raise BadUsage(f"{path}: key {dotted!r} looks like an environment variable; set those in the "
                               "environment (see `avctl --help`), not in a config file")
            _refuse_env_keys(value, path, f"{dotted}.")
    elif isinstance(data, list):
        for item in data:
            _refuse_env_keys(item, path, where)


def _is_flat(data: dict[str, Any]) -> bool:
    """The older flat form: only TrainConfig names, none of them holding a section."""
    return all(k in FLAT_KEYS for k in data) and not any(isinstance(v, dict) for v in data.values())


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in data.items():
        *sections, name = FLAT_KEYS[key]
        node = nested
        for s in sections:
            node = node.setdefault(s, {})
        node[name] = value
    return nested


def _set_aside_unused(data: dict[str, Any], path: Path) -> list[str]:
    """Remove ltx-trainer's known keys that avctl does not use from `data` (in place); return their dotted names.
    A key inside an unused section that ltx-trainer does not have either is refused."""
    unused: list[str] = []
    for section, keys in LTX_UNUSED_SECTIONS.items():
        if section not in data:
            continue
        body = data.pop(section)
        if isinstance(body, dict):
            for key in body:
                if key not in keys:
                    raise BadUsage(f"{path}: unknown key '{section}.{key}'")
        unused.append(section)
    for section, keys in LTX_UNUSED.items():
        body = data.get(section)
        if isinstance(body, dict):
            # Named even when null: the warning lists what the file holds, not what it would change.
            unused += [f"{section}.{key}" for key in keys if key in body]
            for key in keys:
                body.pop(key, None)
    return unused


def load_config(path: Path) -> tuple[AvctlConfig, list[str]]:
    """The validated nested config of a file (flat or nested, avctl's or ltx-trainer's) and the ltx-trainer keys
    it holds that avctl does not use. Errors are one line naming the file and the key."""
    path = Path(path)
    raw = read_config_file(path)
    _refuse_env_keys(raw, path)
    data = _nest(raw) if _is_flat(raw) else {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    unused = _set_aside_unused(data, path)
    try:
        cfg = AvctlConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            raise BadUsage(f"{path}: unknown key {where!r}") from exc
        raise BadUsage(f"{path}: {where}: {first['msg']}") from exc
    _check_values(cfg, path)
    return cfg, unused


def _check_values(cfg: AvctlConfig, path: Path) -> None:
    if cfg.model.load_checkpoint:
        raise BadUsage(f"{path}: model.load_checkpoint: avctl resumes from output_dir/state by itself and does not "
                       "warm-start from a LoRA file; leave it empty")
    if cfg.lora.dropout:
        raise BadUsage(f"{path}: lora.dropout {cfg.lora.dropout}: avctl's LoRA has no dropout; set it to 0")
    if cfg.lora.targets is not None and cfg.lora.target_modules is not None:
        raise BadUsage(f"{path}: give lora.targets or lora.target_modules, not both")
    if cfg.optimization.scheduler_type == "constant" and cfg.optimization.lr_end is not None:
        raise BadUsage(f"{path}: optimization.lr_end contradicts scheduler_type constant")


def groups_of_modules(modules: list[str], path: Path) -> list[str]:
    """avctl's module groups that ltx-trainer / PEFT `target_modules` cover. PEFT's list form matches a module
    whose name equals an entry or ends with '.' + entry; avctl trains whole groups, so an entry must match some
    group's modules and every group touched must be covered entirely."""
    from avctl.lora import GROUP_MODULES

    covered: dict[str, set[str]] = {}
    for entry in modules:
        hits = [(group, f"{prefix}.{lin}") for group, (prefix, linears) in GROUP_MODULES.items() for lin in linears
                if f"{prefix}.{lin}" == entry or f"{prefix}.{lin}".endswith("." + entry)]
        if not hits:
            raise BadUsage(f"{path}: lora.target_modules: {entry!r} matches none of avctl's LoRA modules "
                           f"({', '.join(p + '.*' for p, _ in GROUP_MODULES.values())})")
        for group, name in hits:
            covered.setdefault(group, set()).add(name)
    for group, names in covered.items():
        prefix, linears = GROUP_MODULES[group]
        missing = [f"{prefix}.{lin}" for lin in linears if f"{prefix}.{lin}" not in names]
        if missing:
            raise BadUsage(f"{path}: lora.target_modules covers part of group {group}; avctl trains whole groups, "
                           f"so add {', '.join(missing)} (or use lora.targets)")
    return [g for g in GROUP_MODULES if g in covered]


def check_avctl_dataset(data: Path) -> None:
    """ltx-trainer's `.precomputed/` folders hold pickled .pt files, which avctl never loads: refuse them (the
    dataset path however given, so the message says why rather than "not made by avctl prepare")."""
    data = Path(data)
    ltx = ".precomputed" in data.parts or (
        not (data / "avctl.json").is_file()
        and ((data / ".precomputed").is_dir() or ((data / "latents").is_dir() and (data / "conditions").is_dir())))
    if ltx:
        raise BadInput(f"{data}: an ltx-trainer precomputed dataset; its .pt files are pickles, which avctl does not "
                       "load. Use a folder written by `avctl prepare` (dataset.jsonl + avctl.json) as "
                       "data.preprocessed_data_root / --data")


def _common(cfg: AvctlConfig, path: Path, modality: Modality) -> None:
    if cfg.modality is not None and cfg.modality != modality.name:
        raise BadUsage(f"{path}: this config is for modality {cfg.modality!r}, not {modality.name!r}")
    rank = cfg.lora.rank or modality.rank
    if cfg.lora.alpha is not None and cfg.lora.alpha != rank:
        raise BadUsage(f"{path}: lora.alpha {cfg.lora.alpha} must equal the rank, {rank} (avctl trains alpha = rank)")
    if cfg.reference.downscale_factor is not None and cfg.reference.downscale_factor != modality.downscale:
        raise BadUsage(f"{path}: reference.downscale_factor {cfg.reference.downscale_factor} differs from "
                       f"{modality.name}'s {modality.downscale} (fixed per modality)")


def train_options(path: Path, modality: Modality) -> FileOptions:
    """TrainConfig keyword arguments from a config file (None-valued ones left out), checked against `modality`."""
    path = Path(path)
    cfg, unused = load_config(path)
    _common(cfg, path, modality)
    o, a = cfg.optimization, cfg.acceleration
    targets = cfg.lora.targets
    if cfg.lora.target_modules is not None:
        targets = groups_of_modules(cfg.lora.target_modules, path)
    values = {
        "modality": cfg.modality, "model": cfg.model.model_path, "data": cfg.data.preprocessed_data_root,
        "out": cfg.output_dir, "seed": cfg.seed,
        "rank": cfg.lora.rank, "targets": targets, "layout": cfg.reference.layout,
        "lr": o.learning_rate, "lr_end": o.learning_rate if o.scheduler_type == "constant" else o.lr_end,
        "steps": o.steps, "batch_size": o.batch_size, "grad_accum": o.gradient_accumulation_steps,
        "max_grad_norm": o.max_grad_norm, "optimizer": o.optimizer_type, "weight_decay": o.weight_decay,
        "loraplus_lr_ratio": o.loraplus_lr_ratio, "gradient_checkpointing": o.enable_gradient_checkpointing,
        "dtype": _DTYPE.get(a.mixed_precision_mode or ""), "quantize": _QUANTIZATION.get(a.quantization or ""),
        "text_encoder_8bit": a.load_text_encoder_in_8bit, "strategy": a.strategy,
        "loader_workers": cfg.data.num_dataloader_workers, "prefetch_factor": cfg.data.prefetch_factor,
        "validate_every": cfg.validation.interval, "save_every": cfg.checkpoints.interval,
        "keep_last": cfg.checkpoints.keep_last_n, "tensorboard": cfg.logging.tensorboard,
    }
    resume = None if cfg.checkpoints.no_resume is None else not cfg.checkpoints.no_resume
    return FileOptions({k: v for k, v in values.items() if v is not None}, unused, resume)


def prepare_options(path: Path, modality: Modality) -> FileOptions:
    """`avctl prepare` options from a config file (None-valued ones left out); the training sections are checked
    but not used."""
    path = Path(path)
    cfg, unused = load_config(path)
    _common(cfg, path, modality)
    p = cfg.prepare
    values = {
        "out": cfg.data.preprocessed_data_root, "model": cfg.model.model_path, "seed": cfg.seed,
        "bucket": p.bucket, "caption": p.caption, "workers": p.workers, "backend": p.backend,
        "weights": p.weights, "speakers": p.speakers, "line_width": p.line_width, "precompute": p.precompute,
    }
    return FileOptions({k: v for k, v in values.items() if v is not None}, unused)


def modality_config(modality: Modality) -> dict[str, Any]:
    """The nested config holding a modality's defaults (the paper's Table 5), as `configs/<modality>.yaml` ships."""
    return {
        "modality": modality.name,
        "lora": {"rank": modality.rank, "alpha": modality.alpha, "targets": list(modality.targets)},
        "reference": {"layout": modality.layout, "downscale_factor": modality.downscale},
        "optimization": {"learning_rate": 1e-4, "lr_end": 1e-5, "steps": modality.steps, "batch_size": 1,
                         "gradient_accumulation_steps": 1, "max_grad_norm": 1.0, "optimizer_type": "adamw",
                         "scheduler_type": "linear"},
        "data": {"preprocessed_data_root": f"datasets/{modality.name}"},
        "checkpoints": {"interval": 250, "keep_last_n": 3},
        "seed": 42,
        "output_dir": f"runs/{modality.name}",
    }
