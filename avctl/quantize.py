"""Quantized frozen base: int8 / fp8 weight-only transformer blocks and an 8-bit text encoder, through torchao.

The quantized model stays diffusers' (or transformers') own class: torchao swaps each chosen `nn.Linear`'s weight
for a tensor subclass (`Int8Tensor`, `Float8Tensor`: int8 or float8-e4m3 values with one scale per output row) and
keeps the module, its name and its class. PEFT's own torchao dispatcher wraps those Linears in `TorchaoLoraLinear`,
so `transformer.add_adapter` (avctl.lora.add_lora) and `load_lora_adapter` work unchanged, and the LoRA weights are
ordinary tensors that train in fp32 over the frozen base (`adapters_to_fp32`, `check_lora_training`). Both modes
run on CPU (torchao dequantises per layer there) and on CUDA.

Order, for train and generate: load → cast to the base dtype (bf16) → `quantize_backbone` → add or load the LoRA →
`adapters_to_fp32` → optimizer. Quantize after the dtype cast (a quantized weight is not cast again) and before any
adapter is added (PEFT picks its torchao LoRA layer when the adapter is injected).
"""

from __future__ import annotations

import fnmatch
import types
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from avctl.errors import BadUsage

QuantMode = Literal["int8", "fp8"]
#: The values `--quantize` takes; "none" keeps the base as it is.
QUANTIZE_CHOICES = ("none", "int8", "fp8")

#: Only Linear layers inside this prefix are quantized: the attention q/k/v/out and feed-forward projections of every
#: transformer block, ~97 % of LTX-2's transformer weights.
TRANSFORMER_SCOPE = "transformer_blocks."

#: Module-name patterns (fnmatch, full dotted name) kept in the base dtype even where they are Linear layers, as
#: ltx-trainer keeps them. They are a small share of the weights, and their error is not averaged away: every token
#: passes through the patchify and output projections, and the timestep modulation scales and shifts every
#: activation of every block.
KEEP_FULL_PRECISION: dict[str, str] = {
    "proj_in": "video patchify projection (latent channels -> width)",
    "audio_proj_in": "audio patchify projection",
    "proj_out": "video output projection (the velocity itself)",
    "audio_proj_out": "audio output projection",
    "time_embed.*": "video timestep embedding / adaLN modulation",
    "audio_time_embed.*": "audio timestep embedding / adaLN modulation",
    "av_cross_attn_*": "audio<->video cross-attention modulation and gates",
    "caption_projection.*": "text caption projection (video)",
    "audio_caption_projection.*": "text caption projection (audio)",
    "*prompt_adaln*": "LTX-2.3 prompt modulation (cross_attn_mod)",
    "*.to_gate_logits": "LTX-2.3 per-head attention gate (one output per head, nothing to save)",
    "*norm*": "normalisation layers",
    "*scale_shift_table*": "per-block adaLN tables (parameters, not Linear: listed for completeness)",
}

#: Gemma's text decoder: its Linear layers are quantized for `--text-encoder-8bit`; the token embeddings (tied to
#: lm_head, which LTX-2 never calls), the vision tower and the multimodal projector are left alone.
TEXT_ENCODER_SCOPE = ("*language_model.layers.*", "model.layers.*")
TEXT_ENCODER_KEEP = ("*vision_tower*", "*multi_modal_projector*", "lm_head", "*embed*")


@dataclass
class QuantReport:
    """What quantization did: modules quantized, their weights' bytes, and the whole module's bytes."""

    mode: str
    modules: int
    quantized_bytes_before: int  # the quantized weights, before
    quantized_bytes_after: int  # the same weights quantized (data + scales)
    bytes_before: int  # every parameter and buffer of the module
    bytes_after: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        mib = 1024**2
        return (f"{self.mode}: {self.modules} Linear layers, {self.quantized_bytes_before / mib:.1f} -> "
                f"{self.quantized_bytes_after / mib:.1f} MiB; model {self.bytes_before / mib:.1f} -> "
                f"{self.bytes_after / mib:.1f} MiB")


# ------------------------------------------------------------------------------------------------ checks
def check_quantize_args(quantize: str | None, text_encoder_8bit: bool = False) -> QuantMode | None:
    """Refuse a bad `--quantize` (or a missing torchao) before anything loads; returns the mode, None for "none"."""
    if quantize is None or quantize == "none":
        mode = None
    elif quantize in ("int8", "fp8"):
        mode = quantize
    else:
        raise BadUsage(f"--quantize {quantize!r}: use one of {', '.join(QUANTIZE_CHOICES)}")
    if mode is not None or text_encoder_8bit:
        _torchao()
    return mode  # type: ignore[return-value]


def _torchao() -> Any:
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_
    except ImportError as exc:
        raise BadUsage("--quantize and --text-encoder-8bit need torchao: pip install torchao") from exc
    # PEFT warns once per process that a torchao LoRA layer cannot merge without the quantizer's recipe; avctl
    # never merges adapters into the base (they are applied on the fly), so the warning only confuses.
    warnings.filterwarnings("ignore", message=r".*without `get_apply_tensor_subclass`.*")
    return quantize_


def _config(mode: QuantMode) -> Any:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    # Per-row (per output channel) scales; set_inductor_config=False: it would change torch.compile's global
    # settings, and nothing here compiles.
    if mode == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if mode == "fp8":
        return Float8WeightOnlyConfig(set_inductor_config=False)
    raise BadUsage(f"unknown quantization mode {mode!r}; use int8 or fp8")


# ------------------------------------------------------------------------------------------------ selection
def _matches(name: str, patterns: Any) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def transformer_targets(transformer: torch.nn.Module) -> list[str]:
    """Names of the Linear layers `quantize_transformer` quantizes."""
    return [
        n for n, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith(TRANSFORMER_SCOPE) and not _matches(n, KEEP_FULL_PRECISION)
        and not _is_lora_part(n)
    ]


def text_encoder_targets(text_encoder: torch.nn.Module) -> list[str]:
    """Names of the Linear layers `quantize_text_encoder` quantizes (Gemma's decoder layers)."""
    return [
        n for n, m in text_encoder.named_modules()
        if isinstance(m, torch.nn.Linear) and _matches(n, TEXT_ENCODER_SCOPE) and not _matches(n, TEXT_ENCODER_KEEP)
    ]


def _is_lora_part(name: str) -> bool:
    return ".lora_" in name or name.endswith(".base_layer")


# ------------------------------------------------------------------------------------------------ sizes
def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor; a torchao tensor subclass counts its inner data and scales."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (shared tensors once)."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen[id(t)] = tensor_bytes(t)
    return sum(seen.values())


def is_quantized(weight: torch.Tensor) -> bool:
    try:
        from torchao.utils import TorchAOBaseTensor
    except ImportError:
        return False
    return isinstance(weight, TorchAOBaseTensor)


# ------------------------------------------------------------------------------------------------ quantizing
class _FrozenQuantizedLinear(torch.autograd.Function):
    """y = x·Wᵀ + b over a frozen quantized W that keeps the QUANTIZED weight for the backward pass. torchao's linear
    runs above autograd and casts W up before its matmul, so autograd would hold a full-precision copy of every
    quantized weight until backward: more memory than the unquantized base when training without gradient
    checkpointing. Here the copy lives only inside each layer's forward and backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.x_dtype = x.dtype
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        (weight,) = ctx.saved_tensors
        grad_x = grad @ weight.dequantize().to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return (grad_x.to(ctx.x_dtype) if grad_x is not None else None), None, grad_bias


def _frozen_quantized_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _FrozenQuantizedLinear.apply(x, self.weight, self.bias)


def _quantize_named(module: torch.nn.Module, names: list[str], mode: QuantMode) -> QuantReport:
    quantize_ = _torchao()
    if any(".lora_" in n for n, _ in module.named_parameters()):
        raise BadUsage("quantize the base before adding LoRA adapters (PEFT picks its quantized LoRA layer then)")
    wanted = set(names)
    before_total = module_bytes(module)
    modules = dict(module.named_modules())
    before = sum(tensor_bytes(modules[n].weight) for n in names)
    quantize_(module, _config(mode), filter_fn=lambda m, fqn: fqn in wanted)
    for n in names:  # the module keeps its class; only this instance's forward changes
        modules[n].forward = types.MethodType(_frozen_quantized_forward, modules[n])
    after = sum(tensor_bytes(modules[n].weight) for n in names)
    return QuantReport(mode, len(names), before, after, before_total, module_bytes(module))


def quantize_transformer(transformer: torch.nn.Module, mode: QuantMode) -> QuantReport:
    """Weight-only quantize the Linear layers inside the transformer blocks (attention q/k/v/out, feed-forward), in
    place; everything in KEEP_FULL_PRECISION stays in the base dtype. Call after casting the model to its dtype and
    before adding any LoRA."""
    return _quantize_named(transformer, transformer_targets(transformer), mode)


def quantize_text_encoder(text_encoder: torch.nn.Module) -> QuantReport:
    """int8 weight-only on Gemma's decoder Linear layers, in place (the 8-bit text encoder); embeddings, vision
    tower and multimodal projector untouched."""
    return _quantize_named(text_encoder, text_encoder_targets(text_encoder), "int8")


def quantize_backbone(backbone: Any, quantize: str | None, text_encoder_8bit: bool = False) -> list[QuantReport]:
    """The one call train and generate make right after loading: `--quantize` on the transformer,
    `--text-encoder-8bit` on the text encoder (when loaded). Returns what was done."""
    mode = check_quantize_args(quantize, text_encoder_8bit)
    reports = []
    if mode is not None:
        reports.append(quantize_transformer(backbone.transformer, mode))
    if text_encoder_8bit and getattr(backbone, "text_encoder", None) is not None:
        reports.append(quantize_text_encoder(backbone.text_encoder))
        backbone.text_encoder_8bit = True
    return reports


# ------------------------------------------------------------------------------------------------ LoRA on top
def adapters_to_fp32(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Cast every LoRA weight to fp32 in place (PEFT creates them in the base layer's dtype, which a quantized or
    bf16 base reports as bf16); the base is untouched. Call after adding the adapter and before building the
    optimizer. Returns the LoRA parameters."""
    params = [p for n, p in transformer.named_parameters() if ".lora_" in n]
    with torch.no_grad():
        for p in params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
    return params


def check_lora_training(transformer: torch.nn.Module) -> None:
    """Refuse a run whose trainable parameters are anything but fp32 LoRA weights (a quantized or bf16 base must
    stay frozen; bf16 LoRA weights lose most small AdamW updates)."""
    for n, p in transformer.named_parameters():
        if not p.requires_grad:
            continue
        if ".lora_" not in n:
            raise BadUsage(f"{n} is trainable but is not a LoRA weight; the base must stay frozen")
        if p.dtype != torch.float32:
            raise BadUsage(f"{n} is {p.dtype}; LoRA weights must train in fp32 (call adapters_to_fp32)")
