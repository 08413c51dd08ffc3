"""Memory plan of a training run, per GPU, part by part, before anything is loaded.

Parameter counts come from the model's own configs built on `meta` (instant, no weights). Activation memory comes
from per-token costs measured at LTX-2's real width (`ACTIVATION_COSTS`, measured with `measure_saved_bytes` on
`shape:1`: bytes that autograd keeps for backward, frozen weights excluded) and an analytic term for the LoRA layers.
Two phases are planned: the training step (transformer + LoRA + optimizer + activations; no encoder is resident)
and precompute (the encoders filling the latent cache, before the transformer is loaded).

A step's peak is what autograd keeps (the outer layers once, every block's saved tensors, or with gradient
checkpointing every block's input plus one block recomputed) plus one block's worth of transient gradients while
that block runs backward.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from avctl.errors import BadInput, BadUsage

GIB = 2**30

# Bytes kept for backward per token, measured on `shape:1` (real LTX-2 widths, bf16, no LoRA, per-token timesteps,
# 1,024 text tokens) with `measure_saved_bytes`, CPU, torch 2.15: fits of four canvases (160-1280 video and 20-80
# audio tokens) reproduce every measurement to < 0.1 %. "outer" is what the layers around the blocks keep (the
# per-token timestep embeddings dominate: 6 modulation vectors per token), "block" one transformer block, "input"
# a block's input as gradient checkpointing keeps it (the hidden states: 4,096 / 2,048 bf16 values per token).
ACTIVATION_COSTS: dict[str, float] = {
    "outer_video": 106_497.0,
    "outer_audio": 53_252.0,
    "outer_constant": 12.59e6,
    "block_video": 311_694.0,
    "block_audio": 180_644.0,
    "block_constant": 12.7e6,
}
# What a CPU training process holds beyond the planned tensors (allocator arenas, thread pools, the framework's
# objects): a fresh `train canny --model shape:1` from a filled cache peaked 1.72-1.76 GiB above its RSS after
# imports against 1.42 GiB of planned tensors (2-core x86, torch 2.15). On a GPU this lives in host memory and the
# CUDA context is covered by GPU_RESERVE_GIB instead.
CPU_PROCESS_OVERHEAD_GIB = 0.3
# Allocator fragmentation and the CUDA context, kept free on a GPU on top of the planned peak.
GPU_RESERVE_GIB = 1.5
GPU_FRAGMENTATION = 0.05
ADAM_BYTES = {"adamw": 8, "adamw8bit": 2}
QUANTIZED_BYTES = {"int8": 1, "fp8": 1}


@dataclass
class PlanRequest:
    modality: str = "canny"
    model: str | None = None
    bucket: tuple[int, int, int] = (768, 512, 121)  # width, height, frames
    fps: float = 24.0
    rank: int | None = None
    targets: tuple[str, ...] | None = None  # LoRA target groups; default: the modality's
    batch_size: int = 1
    quantize: Literal["none", "int8", "fp8"] = "none"
    text_encoder_8bit: bool = False
    gradient_checkpointing: bool | None = None  # None: on for any model larger than pocket
    world_size: int = 1
    strategy: Literal["ddp", "fsdp"] = "ddp"
    dtype: Literal["bf16", "fp32"] = "bf16"
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    device: Literal["cuda", "cpu"] = "cuda"
    gpu_memory_gib: float | None = None


@dataclass
class Plan:
    request: dict[str, Any]
    model: str
    tokens: dict[str, int]
    parts: dict[str, float]  # GiB at the training-step peak
    precompute: dict[str, float]  # GiB while the cache is filled
    peak_gib: float
    precompute_peak_gib: float
    gradient_checkpointing: bool
    lora_parameters: int
    fits: bool | None = None
    gpu_memory_gib: float | None = None
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ model on meta
@dataclass
class _ModelShape:
    name: str
    transformer: torch.nn.Module  # on meta
    counts: dict[str, int]  # parameters per component
    text_length: int
    block_linear_params: int  # parameters of the Linear layers inside transformer_blocks (what int8/fp8 quantize)
    text_layers: int  # the text encoder's hidden states stacked for the connectors (layers + embeddings)
    text_hidden: int


_MODEL_CACHE: dict[str, _ModelShape] = {}


def _model_shape(model: str | None) -> _ModelShape:
    from avctl import presets
    from avctl.backbone import DEFAULT_MODEL_ID, POCKET, POCKET_DIR, TINY

    name = model or DEFAULT_MODEL_ID
    if name in _MODEL_CACHE:
        return _MODEL_CACHE[name]
    text_length = presets.TEXT_MAX_LENGTH
    if presets.is_shape(name):
        configs, label = presets.shape_configs(presets.shape_blocks(name)), name
        modules = {c: presets.build_module(c, cfg) for c, cfg in configs.items()}
    elif name == TINY:
        from avctl.backbone import _build_tiny
        from avctl.presets import TINY_MAX_LENGTH

        modules, _ = _build_tiny({"transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder"})
        label, text_length = name, TINY_MAX_LENGTH
    else:
        directory = POCKET_DIR if name == POCKET else _model_directory(name)
        if directory is None:
            # Not downloaded: LTX-2's own configs ship with avctl (the `shape` preset), so plan counts from them.
            configs, label = presets.shape_configs(None), f"{name} (counted from avctl's shipped LTX-2 configs)"
        else:
            configs, label = _directory_configs(directory), name
            tokenizer_config = directory / "tokenizer" / "tokenizer_config.json"
            if tokenizer_config.is_file():
                limit = json.loads(tokenizer_config.read_text()).get("model_max_length", text_length)
                text_length = min(int(limit), presets.TEXT_MAX_LENGTH)
        modules = {c: presets.build_module(c, cfg) for c, cfg in configs.items()}
    counts = {c: sum(p.numel() for p in m.parameters()) for c, m in modules.items()}
    text = modules["text_encoder"].config.get_text_config()
    shape = _ModelShape(label, modules["transformer"], counts, text_length,
                        _block_linear_params(modules["transformer"]), text.num_hidden_layers + 1, text.hidden_size)
    _MODEL_CACHE[name] = shape
    return shape


def meta_transformer(model: str | None) -> torch.nn.Module | None:
    """The model's transformer without its weights (on `meta`; tiny's is built, it is small), for checks that need
    only its module names and sizes; None when the model cannot be found here (its loader then says so)."""
    from avctl import presets
    from avctl.backbone import DEFAULT_MODEL_ID, POCKET, TINY

    name = model or DEFAULT_MODEL_ID
    if not (presets.is_shape(name) or name in (TINY, POCKET) or _model_directory(name) is not None):
        return None
    return _model_shape(name).transformer


def _model_directory(name: str) -> Path | None:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from avctl.backbone import _locate

        return _locate(name)[0]
    except Exception:  # not downloaded, or not a hub id: plan falls back to the shipped configs
        return None


def _directory_configs(directory: Path) -> dict[str, dict[str, Any]]:
    configs = {}
    for component in ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder"):
        path = directory / component / "config.json"
        if not path.is_file():
            raise BadInput(f"{path}: missing; plan needs every component's config.json")
        configs[component] = json.loads(path.read_text())
    return configs


def _block_linear_params(transformer: torch.nn.Module) -> int:
    return sum(m.weight.numel() for n, m in transformer.named_modules()
               if n.startswith("transformer_blocks.") and isinstance(m, torch.nn.Linear))


def lora_parameters(transformer: torch.nn.Module, groups: tuple[str, ...] | list[str], rank: int) -> int:
    """LoRA parameters for these target groups at this rank, by PEFT's list matching (name equals an entry or
    ends with '.' + entry)."""
    return sum(rank * (m.in_features + m.out_features) for _, m in _lora_linears(transformer, groups))


def _lora_linears(transformer: torch.nn.Module, groups: tuple[str, ...] | list[str]
                  ) -> list[tuple[str, torch.nn.Linear]]:
    from avctl.lora import target_modules

    entries = target_modules(groups)
    return [(n, m) for n, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and any(n == e or n.endswith("." + e) for e in entries)]


def _input_stream(name: str) -> Literal["video", "audio", "text"]:
    """Whose tokens a block Linear reads: cross-attention keys and values read the prompt; audio↔video attention
    reads the other stream's keys and values."""
    attention, _, linear = name.split(".", 2)[2].partition(".")
    kv = linear in ("to_k", "to_v")
    if attention in ("attn2", "audio_attn2") and kv:
        return "text"
    if attention == "audio_to_video_attn":
        return "audio" if kv else "video"
    if attention == "video_to_audio_attn":
        return "video" if kv else "audio"
    return "audio" if attention.startswith("audio_") else "video"


# ------------------------------------------------------------------------------------------------ tokens
def canvas_tokens(transformer: torch.nn.Module, modality: Any, bucket: tuple[int, int, int], fps: float
                  ) -> dict[str, int]:
    """Video (target + reference) and audio tokens of one training sample."""
    width, height, frames = bucket
    t_scale, h_scale, w_scale = transformer.config.vae_scale_factors
    if frames < 1 or (frames - 1) % t_scale or height % h_scale or width % w_scale:
        raise BadUsage(f"bucket {width}x{height}x{frames}: width and height must be multiples of {w_scale}, frames "
                       f"1 + a multiple of {t_scale}")
    grid = ((frames - 1) // t_scale + 1, height // h_scale, width // w_scale)
    target = math.prod(grid)
    s = modality.downscale
    reference = 0
    if "video" in modality.streams:
        if grid[1] % s or grid[2] % s:
            raise BadUsage(f"bucket {width}x{height}: the {s}x reference needs width and height multiples of "
                           f"{w_scale * s}")
        reference = grid[0] * (grid[1] // s) * (grid[2] // s)
    samples = round(frames / fps * transformer.config.audio_sampling_rate)
    mel_frames = samples // transformer.config.audio_hop_length + 1
    audio = -(-mel_frames // transformer.config.audio_scale_factor)
    audio_total = audio * (2 if "audio" in modality.streams else 1)
    if modality.context == "absent" and "audio" not in modality.trained_streams and "audio" not in modality.streams:
        audio_total = 1
    return {"video_target": target, "video_reference": reference, "video": target + reference,
            "audio": audio_total}


# ------------------------------------------------------------------------------------------------ the plan
def default_checkpointing(transformer_parameters: int) -> bool:
    """Gradient checkpointing is on by default for any model larger than pocket."""
    from avctl.backbone import POCKET_DIR

    config = POCKET_DIR / "transformer" / "config.json"
    pocket = _pocket_transformer_parameters(config.read_text()) if config.is_file() else 0
    return transformer_parameters > pocket


_POCKET_PARAMS: dict[str, int] = {}


def _pocket_transformer_parameters(config_text: str) -> int:
    if config_text not in _POCKET_PARAMS:
        from avctl import presets

        module = presets.build_module("transformer", json.loads(config_text))
        _POCKET_PARAMS[config_text] = sum(p.numel() for p in module.parameters())
    return _POCKET_PARAMS[config_text]


def make_plan(request: PlanRequest) -> Plan:
    from avctl.modalities.base import get_modality

    if request.world_size < 1 or request.batch_size < 1:
        raise BadUsage("--world-size and --batch-size must be at least 1")
    if request.quantize == "fp8" and request.device != "cuda":
        raise BadUsage("--quantize fp8 needs a CUDA GPU; use int8 on a CPU")
    modality = get_modality(request.modality)
    if request.targets:
        modality = replace(modality, targets=tuple(request.targets))
    rank = request.rank or modality.rank
    model = _model_shape(request.model)
    tr = model.transformer
    tokens = canvas_tokens(tr, modality, request.bucket, request.fps)
    checkpointing = (request.gradient_checkpointing if request.gradient_checkpointing is not None
                     else default_checkpointing(model.counts["transformer"]))
    shards = request.world_size if request.strategy == "fsdp" else 1
    batch = request.batch_size
    base_bytes = 2 if request.dtype == "bf16" else 4

    # Frozen transformer weights (block Linears at 1 byte when quantized); FSDP shards them over the ranks.
    weights = model.counts["transformer"] * base_bytes
    if request.quantize != "none":
        weights -= model.block_linear_params * (base_bytes - QUANTIZED_BYTES[request.quantize])
    if request.dtype == "fp32" and request.device == "cuda":
        weights += model.counts["transformer"] * 2  # autocast keeps bf16 copies of fp32 weights within a step
    n_lora = lora_parameters(tr, modality.targets, rank)
    lora_bytes = n_lora * (4 + 4 + ADAM_BYTES[request.optimizer])  # fp32 weights + grads + moments

    act = ACTIVATION_COSTS
    tv, ta = tokens["video"] * batch, tokens["audio"] * batch
    text_scale = model.text_length / 1024  # the constants were measured with 1,024 text tokens
    outer = act["outer_video"] * tv + act["outer_audio"] * ta + act["outer_constant"] * text_scale * batch
    block = act["block_video"] * tv + act["block_audio"] * ta + act["block_constant"] * text_scale * batch
    # LoRA layers keep their input as the adapter's fp32 (CPU) or autocast's bf16 (GPU), and the rank-r middle.
    lora_act_bytes = 2 if request.device == "cuda" else 4
    blocks = tr.config.num_layers
    tokens_of = {"video": tv, "audio": ta, "text": model.text_length * batch}
    per_block_lora = sum(lora_act_bytes * (m.in_features + rank) * tokens_of[_input_stream(name)]
                         for name, m in _lora_linears(tr, modality.targets)) / blocks
    block += per_block_lora
    hidden = 2 * (tv * tr.config.num_attention_heads * tr.config.attention_head_dim
                  + ta * tr.config.audio_num_attention_heads * tr.config.audio_attention_head_dim)
    saved = outer + (blocks * hidden + block if checkpointing else blocks * block)
    activations = saved + block  # + one block's transient gradients during its backward

    parts = {
        "transformer weights": weights / shards,
        "lora + optimizer": lora_bytes / shards,
        "activations": activations,
    }
    parts = {k: v / GIB for k, v in parts.items()}
    if request.device == "cpu":
        parts["process overhead (CPU)"] = CPU_PROCESS_OVERHEAD_GIB
    precompute = _precompute_parts(model, request)
    peak = sum(parts.values())
    plan = Plan(request=_request_dict(request), model=model.name, tokens=tokens,
                parts={k: round(v, 3) for k, v in parts.items()},
                precompute={k: round(v, 3) for k, v in precompute.items()},
                peak_gib=round(peak, 3), precompute_peak_gib=round(sum(precompute.values()), 3),
                gradient_checkpointing=checkpointing, lora_parameters=n_lora, gpu_memory_gib=request.gpu_memory_gib)
    if request.gpu_memory_gib is not None:
        plan.fits = _fits(plan.peak_gib, plan.precompute_peak_gib, request.gpu_memory_gib)
        if not plan.fits:
            plan.advice = advise(request)
    return plan


def _precompute_parts(model: _ModelShape, request: PlanRequest) -> dict[str, float]:
    """The encoders while the cache is filled: weights, the text encoder's stacked hidden states and a tiled VAE
    encode (the largest feature map of one tile: 256 channels at a quarter of the tile's pixels, held a few times)."""
    te = model.counts["text_encoder"] * 2
    if request.text_encoder_8bit:
        te = te // 2  # int8 weights for the decoder layers: about half of bf16 (embeddings stay bf16)
    text_activations = 2 * model.text_length * model.text_hidden * model.text_layers * 2  # stacked, then flattened
    tile_pixels = 512 * 512 * 16
    vae_activations = tile_pixels / 16 * 256 * 2 * 6
    parts = {
        "text encoder weights": te,
        "connectors weights": model.counts["connectors"] * 2,
        "vae weights": (model.counts["vae"] + model.counts["audio_vae"]) * 2,
        "encoding activations": text_activations + vae_activations,
    }
    return {k: v / GIB for k, v in parts.items()}


def _fits(peak: float, precompute: float, gpu: float) -> bool:
    usable = gpu * (1 - GPU_FRAGMENTATION) - GPU_RESERVE_GIB
    return max(peak, precompute) <= usable


def _request_dict(request: PlanRequest) -> dict[str, Any]:
    d = asdict(request)
    d["bucket"] = "x".join(map(str, request.bucket))
    d["targets"] = list(request.targets) if request.targets else None
    return d


def advise(request: PlanRequest) -> list[str]:
    """Flag strings that make the run fit, the first of which alone does: single changes that fit on their own
    first (least costly first), then the smallest greedy combination."""
    from avctl.modalities.base import get_modality

    rank = request.rank or get_modality(request.modality).rank
    width, height, frames = request.bucket
    candidates: list[tuple[str, dict[str, Any]]] = []
    if request.gradient_checkpointing is False:
        candidates.append(("--gradient-checkpointing", {"gradient_checkpointing": True}))
    if request.quantize == "none":
        candidates.append(("--quantize int8", {"quantize": "int8"}))
        if request.device == "cuda":
            candidates.append(("--quantize fp8", {"quantize": "fp8"}))
    if not request.text_encoder_8bit:
        candidates.append(("--text-encoder-8bit", {"text_encoder_8bit": True}))
    if request.optimizer == "adamw":
        candidates.append(("--optimizer adamw8bit", {"optimizer": "adamw8bit"}))
    for r in (rank // 2, rank // 4, rank // 8):
        if r >= 8:
            candidates.append((f"--rank {r}", {"rank": r}))
    if request.batch_size > 1:
        candidates.append(("--batch-size 1", {"batch_size": 1}))
    short = (frames - 1) // 2 // 8 * 8 + 1
    if short < frames:
        candidates.append((f"--bucket {width}x{height}x{short}", {"bucket": (width, height, short)}))
    half = (width // 2 // 64 * 64, height // 2 // 64 * 64)
    if min(half) >= 64:
        candidates.append((f"--bucket {half[0]}x{half[1]}x{frames}", {"bucket": (*half, frames)}))
    for n in (2, 4, 8):
        if n > request.world_size:
            candidates.append((f"--world-size {n} --strategy fsdp", {"world_size": n, "strategy": "fsdp"}))

    def fits(changes: dict[str, Any]) -> bool:
        p = make_plan(replace(request, gpu_memory_gib=None, **changes))
        return _fits(p.peak_gib, p.precompute_peak_gib, request.gpu_memory_gib or 0)

    single = [flag for flag, changes in candidates if fits(changes)]
    if single:
        return single
    # No single change fits: add them in order until one set fits, then drop each that the fit does not need.
    chosen: list[tuple[str, dict[str, Any]]] = []
    for flag, change in candidates:
        if any(next(iter(change)) == next(iter(c)) and "bucket" not in change for _, c in chosen):
            continue
        chosen.append((flag, change))
        if fits(_merge(chosen)):
            for item in list(chosen):
                rest = [c for c in chosen if c is not item]
                if rest and fits(_merge(rest)):
                    chosen = rest
            return [" ".join(_flags(chosen))]
    return []


def _merge(chosen: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The changes of several flags together; bucket changes combine to the smallest of each side."""
    merged: dict[str, Any] = {}
    for _, change in chosen:
        for key, value in change.items():
            if key == "bucket" and "bucket" in merged:
                value = tuple(min(a, b) for a, b in zip(merged["bucket"], value, strict=True))
            merged[key] = value
    return merged


def _flags(chosen: list[tuple[str, dict[str, Any]]]) -> list[str]:
    flags = [flag for flag, change in chosen if "bucket" not in change]
    buckets = [change for _, change in chosen if "bucket" in change]
    if buckets:
        w, h, f = _merge([("", b) for b in buckets])["bucket"]
        flags.append(f"--bucket {w}x{h}x{f}")
    return flags


def parse_bucket(text: str) -> tuple[int, int, int]:
    from avctl.media import Bucket

    bucket = Bucket.parse(text)
    return bucket.width, bucket.height, bucket.frames


# ------------------------------------------------------------------------------------------------ measuring
def measure_saved_bytes(transformer: torch.nn.Module, video_tokens: tuple[int, int, int], audio_tokens: int,
                        text_length: int, checkpointing: bool, seed: int = 0) -> int:
    """Bytes autograd keeps for backward over one forward of the transformer (frozen weights excluded), with
    inputs that require grad as they do downstream of a LoRA. `video_tokens` is the target's latent grid; no
    reference (a reference adds tokens like any other). How ACTIVATION_COSTS were measured."""
    from avctl.canvas import Canvas, build_stream
    from avctl.forward import predict

    g = torch.Generator().manual_seed(seed)
    dtype = next(transformer.parameters()).dtype
    cfg = transformer.config
    video = torch.randn(1, cfg.in_channels, *video_tokens, generator=g).to(dtype)
    mel = cfg.audio_in_channels // 8
    audio = torch.randn(1, cfg.audio_in_channels // mel, audio_tokens, mel, generator=g).to(dtype)
    sigma = torch.tensor([0.5])
    canvas = Canvas(build_stream("video", transformer, video, sigma, []),
                    build_stream("audio", transformer, audio, sigma, []))
    canvas.video.tokens.requires_grad_(True)
    canvas.audio.tokens.requires_grad_(True)
    text = torch.randn(1, text_length, cfg.caption_channels, generator=g).to(dtype)
    params = {p.untyped_storage().data_ptr() for p in transformer.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    if checkpointing:
        transformer.enable_gradient_checkpointing()
    else:
        transformer.disable_gradient_checkpointing()
    transformer.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        predict(transformer, canvas, text, text, torch.ones(1, text_length))
    return sum(kept.values())


def training_plan(config: Any, bucket: tuple[int, int, int], world_size: int, device: Literal["cuda", "cpu"],
                  gpu_memory_gib: float | None, strategy: Literal["ddp", "fsdp"] = "ddp") -> Plan:
    """The plan of the run a `train` config describes, as `train` prints it before loading anything."""
    from avctl import presets

    dtype = config.dtype or ("bf16" if device == "cuda" or presets.is_shape(config.model) else "fp32")
    return make_plan(PlanRequest(
        modality=config.modality, model=config.model, bucket=bucket, rank=config.rank,
        targets=tuple(config.targets) if config.targets else None,
        batch_size=config.batch_size, quantize=config.quantize, text_encoder_8bit=config.text_encoder_8bit,
        gradient_checkpointing=config.gradient_checkpointing, world_size=world_size, strategy=strategy,
        dtype=dtype, optimizer=config.optimizer, device=device, gpu_memory_gib=gpu_memory_gib,
    ))


def visible_gpu_gib() -> float | None:
    """The current GPU's memory in GiB, None without a GPU."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
