"""LoRA on LTX-2: target groups → PEFT adapters, and files in the ComfyUI / ltx-trainer format.

File contract (what ComfyUI, ltx-pipelines, ltx-trainer and diffusers all read):
- keys `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` (e.g.
  `diffusion_model.transformer_blocks.7.attn1.to_q.lora_A.weight`), bf16, no `.alpha` keys — avctl trains with
  alpha = rank, so loaders that assume alpha = rank (diffusers) or scale 1 (ComfyUI) apply the same delta;
- header metadata `reference_downscale_factor` (read by ComfyUI-LTXVideo and ltx-pipelines) plus `avctl.*` keys,
  each a JSON string.
Loading goes through diffusers' own `LTX2LoraLoaderMixin.lora_state_dict` (it converts the ComfyUI prefix) and
`load_lora_adapter`, so a file that loads here loads in diffusers too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from avctl.errors import BadInput
from avctl.io import save_safetensors

COMFY_PREFIX = "diffusion_model."
_ATTN_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")
_FF_LINEARS = ("net.0.proj", "net.2")

#: The paper's module groups (Table 5) → diffusers module prefixes inside each `transformer_blocks.N`.
#: PEFT list-form matching is "equals or ends with '.' + entry", so "attn1.to_q" never matches "audio_attn1.to_q".
GROUP_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "V.SA": ("attn1", _ATTN_LINEARS),
    "V.CA": ("attn2", _ATTN_LINEARS),
    "V.FF": ("ff", _FF_LINEARS),
    "A.SA": ("audio_attn1", _ATTN_LINEARS),
    "A.CA": ("audio_attn2", _ATTN_LINEARS),
    "A.FF": ("audio_ff", _FF_LINEARS),
    "A→V": ("audio_to_video_attn", _ATTN_LINEARS),  # video queries attend audio
    "V→A": ("video_to_audio_attn", _ATTN_LINEARS),  # audio queries attend video
}


def target_modules(groups: tuple[str, ...] | list[str]) -> list[str]:
    """PEFT `target_modules` (list form) for the given groups."""
    out: list[str] = []
    for g in groups:
        if g not in GROUP_MODULES:
            raise BadInput(f"unknown LoRA target group {g!r}; known: {', '.join(GROUP_MODULES)}")
        prefix, linears = GROUP_MODULES[g]
        out += [f"{prefix}.{lin}" for lin in linears]
    return out


def add_lora(
    transformer: torch.nn.Module, groups: tuple[str, ...] | list[str], rank: int, adapter_name: str = "avctl"
) -> list[torch.nn.Parameter]:
    """Freeze the base and add a trainable LoRA (alpha = rank, B = 0 so training starts at the base model).
    Returns the LoRA parameters, in fp32 whatever the base's dtype: on a bf16 base, bf16 adapters lose most small
    AdamW updates to rounding. PEFT's layer casts its input to the adapter's dtype and the sum back to the base's."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import cast_adapter_dtype

    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=target_modules(groups))
    transformer.add_adapter(config, adapter_name=adapter_name)
    cast_adapter_dtype(transformer, adapter_name)  # diffusers' add_adapter leaves them in the base's dtype
    params = [p for n, p in transformer.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(transformer: torch.nn.Module, adapter_name: str = "avctl") -> dict[str, torch.Tensor]:
    """The adapter's weights with module keys (`transformer_blocks.0.attn1.to_q.lora_A.weight`), detached, fp32,
    whole on the CPU."""
    from peft.utils import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    sd = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    # Under FSDP2 each value is this rank's shard: all-gathered here, so every rank must call this.
    sd = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in sd.items()}
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def metadata_strings(downscale: int, avctl_meta: dict[str, Any]) -> dict[str, str]:
    """Header metadata: `reference_downscale_factor` always, `avctl.<key>` as JSON strings."""
    meta = {"reference_downscale_factor": str(downscale)}
    meta.update({f"avctl.{k}": json.dumps(v) for k, v in avctl_meta.items()})
    return meta


def save_lora(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    downscale: int,
    avctl_meta: dict[str, Any],
    dtype: torch.dtype = torch.bfloat16,
) -> None:
    """Write a LoRA in the ComfyUI / ltx-trainer format, atomically."""
    tensors = {COMFY_PREFIX + k: v.to(dtype).contiguous() for k, v in state_dict.items()}
    save_safetensors(tensors, path, metadata_strings(downscale, avctl_meta))


@dataclass
class LoraFile:
    path: Path
    state_dict: dict[str, torch.Tensor]  # diffusers form: `transformer.<module>.lora_A.weight`
    metadata: dict[str, str]
    avctl: dict[str, Any] = field(default_factory=dict)  # parsed `avctl.*` keys

    @property
    def downscale(self) -> int:
        for key in ("reference_downscale_factor", "ss_reference_downscale_factor"):
            if key in self.metadata:
                return int(float(self.metadata[key]))
        return 1

    @property
    def rank(self) -> int:
        return max(v.shape[0] for k, v in self.state_dict.items() if "lora_A" in k)

    @property
    def modules(self) -> set[str]:
        return {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in self.state_dict if ".lora_" in k}


def read_lora(path: Path) -> LoraFile:
    """Read a LoRA file (ComfyUI / ltx-trainer `diffusion_model.` keys or diffusers `transformer.` keys), safely:
    safetensors only, never pickle."""
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: LoRA file not found")
    if path.suffix != ".safetensors":
        raise BadInput(f"{path}: only .safetensors LoRA files are loaded (pickle formats are unsafe); convert it first")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            keys = list(f.keys())
        if detect_format(keys) == "kohya":  # converted on load, as `avctl lora convert` would
            from safetensors.torch import load_file

            sd = {f"transformer.{k}": v for k, v in to_comfy_state_dict(load_file(str(path)))[0].items()}
        else:
            sd = LTX2LoraLoaderMixin.lora_state_dict(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a readable safetensors LoRA ({exc})") from exc
    sd = {k if k.startswith(("transformer.", "connectors.")) else f"transformer.{k}": v for k, v in sd.items()}
    if not any(".lora_A." in k for k in sd):
        raise BadInput(f"{path}: no LoRA weights (keys with lora_A / lora_B) in this file; if it is another "
                       "layout, try `avctl lora convert`")
    parsed: dict[str, Any] = {}
    for k, v in metadata.items():
        if k.startswith("avctl."):
            try:
                parsed[k.removeprefix("avctl.")] = json.loads(v)
            except json.JSONDecodeError:
                parsed[k.removeprefix("avctl.")] = v
    return LoraFile(path, sd, metadata, parsed)


def load_lora(transformer: torch.nn.Module, lora: LoraFile, adapter_name: str) -> None:
    """Attach a LoRA file as a named adapter (diffusers' loader), after checking its modules exist in the model."""
    check_lora_fits(lora, transformer)
    import logging

    sd = {k: v for k, v in lora.state_dict.items() if k.startswith("transformer.")}
    peft_log = logging.getLogger("diffusers.loaders.peft")
    level = peft_log.level
    peft_log.setLevel(logging.CRITICAL)  # it logs the whole mismatch list before raising; we say it in one line
    try:
        transformer.load_lora_adapter(sd, prefix="transformer", adapter_name=adapter_name)
    except (RuntimeError, ValueError) as exc:  # shape mismatch: a LoRA made for another size of model
        reason = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                      str(exc).splitlines()[0])
        raise BadInput(f"{lora.path}: does not fit this model ({reason}); made for another base model?") from exc
    finally:
        peft_log.setLevel(level)


def check_lora_fits(lora: LoraFile, transformer: torch.nn.Module) -> None:
    """BadInput naming the first thing that does not fit: LoRA modules the model lacks, or A/B shapes other than
    the model's Linear sizes (a LoRA made for another size of model). Needs no weights: a `meta` transformer built
    from the model's config answers as well, so generate checks this before loading anything."""
    model_modules = dict(transformer.named_modules())
    theirs = {m for m in lora.modules if not m.startswith("connectors.")}
    missing = sorted(theirs - model_modules.keys())
    if not theirs or len(missing) == len(theirs):
        raise BadInput(
            f"{lora.path}: none of its {len(theirs)} LoRA modules exist in this model (e.g. {sorted(theirs)[:1]}); "
            "is it an LTX-2 LoRA?"
        )
    if missing:
        raise BadInput(f"{lora.path}: {len(missing)} LoRA modules are not in this model, e.g. {missing[0]}")
    for key, tensor in lora.state_dict.items():
        name, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        module = model_modules.get(name)
        if module is None or not hasattr(module, "in_features"):
            continue
        want = module.in_features if kind.startswith("A") else module.out_features
        got = tensor.shape[1] if kind.startswith("A") else tensor.shape[0]
        if got != want:
            raise BadInput(f"{lora.path}: does not fit this model ({name} lora_{kind[0]} has {got} features, the "
                           f"model's layer {want}); made for another base model?")


# ------------------------------------------------------------------------------------------------ inspect / convert
def _kohya_lookup(max_blocks: int = 64) -> dict[str, str]:
    """Kohya writes `lora_unet_<module with dots as underscores>`; underscores inside names make that ambiguous,
    so map back through the known LTX-2 module names."""
    table = {}
    for i in range(max_blocks):
        for prefix, linears in GROUP_MODULES.values():
            for lin in linears:
                dotted = f"transformer_blocks.{i}.{prefix}.{lin}"
                table[dotted.replace(".", "_")] = dotted
    return table


def detect_format(keys: list[str]) -> str:
    if any(k.startswith("diffusion_model.") for k in keys):
        return "comfyui"
    if any(k.startswith("transformer.") for k in keys):
        return "diffusers"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith("transformer_blocks.") for k in keys):
        return "bare"
    return "unknown"


def to_comfy_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Any of the common LTX-2 LoRA layouts → `{module}.lora_A.weight` / `.lora_B.weight` keys (without the
    `diffusion_model.` prefix), alpha folded into lora_B so the file needs no alpha. Returns it and the source
    format's name."""
    fmt = detect_format(list(sd))
    out: dict[str, torch.Tensor] = {}
    if fmt == "kohya":
        lookup = _kohya_lookup()
        alphas = {k.removesuffix(".alpha"): v for k, v in sd.items() if k.endswith(".alpha")}
        for key, value in sd.items():
            if key.endswith(".alpha"):
                continue
            stem, _, kind = key.partition(".")
            module = lookup.get(stem.removeprefix("lora_unet_"))
            if module is None:
                raise BadInput(f"kohya key {key!r} names no LTX-2 module")
            if kind == "lora_down.weight":
                out[f"{module}.lora_A.weight"] = value
            elif kind == "lora_up.weight":
                rank = sd[f"{stem}.lora_down.weight"].shape[0]
                alpha = float(alphas[stem]) if stem in alphas else float(rank)
                out[f"{module}.lora_B.weight"] = value * (alpha / rank)
        return out, fmt
    strip = {"comfyui": "diffusion_model.", "diffusers": "transformer.", "peft": "base_model.model."}.get(fmt, "")
    if fmt == "unknown":
        raise BadInput("no LTX-2 LoRA keys recognised (expected diffusion_model., transformer., base_model.model. or "
                       "lora_unet_ prefixes)")
    alphas = {k.removesuffix(".alpha"): v for k, v in sd.items() if k.endswith(".alpha")}
    for key, value in sd.items():
        if key.endswith(".alpha") or not key.startswith(strip):
            continue
        name = key.removeprefix(strip)
        # PEFT keeps the adapter name: `...lora_A.<adapter>.weight` → `...lora_A.weight`
        parts = name.split(".")
        if len(parts) >= 3 and parts[-3] in ("lora_A", "lora_B") and parts[-1] == "weight":
            name = ".".join([*parts[:-2], "weight"])
        if name.endswith("lora_B.weight"):
            module = name.removesuffix(".lora_B.weight")
            alpha_key = next((a for a in (f"{strip}{module}", module) if a in alphas), None)
            if alpha_key is not None:
                rank = value.shape[1]
                value = value * (float(alphas[alpha_key]) / rank)
        out[name] = value
    return out, fmt


def group_of(module: str) -> str:
    """The paper's group name for a block-level module name, or 'other'."""
    for group, (prefix, _) in GROUP_MODULES.items():
        if f".{prefix}." in f".{module}.":
            return group
    return "other"


def inspect_lora(path: Path) -> dict[str, Any]:
    """What a LoRA file holds: format, modules per group, rank(s), dtype, metadata."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise BadInput(f"{path}: not a .safetensors file")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        sd = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise BadInput(f"{path}: not readable as safetensors ({exc})") from exc
    fmt = detect_format(list(sd))
    comfy, _ = to_comfy_state_dict(sd) if fmt != "unknown" else ({}, fmt)
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in comfy})
    groups: dict[str, int] = {}
    for m in modules:
        groups[group_of(m)] = groups.get(group_of(m), 0) + 1
    ranks = sorted({int(v.shape[0]) for k, v in comfy.items() if k.endswith("lora_A.weight")})
    return {
        "path": str(path),
        "format": fmt,
        "modules": len(modules),
        "groups": groups,
        "ranks": ranks,
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in sd.values()}),
        "has_alpha_keys": any(k.endswith(".alpha") for k in sd),
        "reference_downscale_factor": metadata.get("reference_downscale_factor"),
        "metadata": metadata,
    }


def convert_lora(src: Path, dst: Path, downscale: int | None = None) -> dict[str, Any]:
    """Rewrite any supported layout as a ComfyUI / ltx-trainer file (bf16, alpha folded, metadata kept)."""
    from safetensors.torch import load_file

    info = inspect_lora(src)
    if info["format"] == "unknown":
        raise BadInput(f"{src}: no LTX-2 LoRA keys recognised")
    comfy, fmt = to_comfy_state_dict(load_file(str(src)))
    meta = {k: v for k, v in info["metadata"].items() if k != "reference_downscale_factor"}
    factor = downscale or int(float(info["metadata"].get("reference_downscale_factor")
                                     or info["metadata"].get("ss_reference_downscale_factor") or 1))
    tensors = {COMFY_PREFIX + k: v.to(torch.bfloat16).contiguous() for k, v in comfy.items()}
    save_safetensors(tensors, Path(dst), {**meta, "reference_downscale_factor": str(factor)})
    return {"source": str(src), "source_format": fmt, "out": str(dst), "modules": info["modules"],
            "reference_downscale_factor": factor}
