"""Training a control LoRA on the parallel canvas.

Rectified flow on the target tokens only: x_t = (1 − σ)·x + σ·ε, the model predicts the velocity ε − x, the loss
is the masked MSE over target tokens. σ comes from a shifted logit-normal whose shift follows the TARGET token count
(the same rule the sampler uses). The base model is frozen; only the LoRA on the modality's target groups trains.

Draws: the run's ONE torch.Generator draws the data order (a permutation per epoch); each sample's σ and noise come
from a generator keyed by (seed, step, slot in the global batch), so they do not depend on how the global batch is
split over ranks: 2 ranks at batch 1 train the same LoRA as 1 rank at batch 2.

Exact resume: every `save_every` steps `OUT/state/` gets the fp32 LoRA weights, the AdamW moments, the step, the
data-order permutation position and the generator's state — as safetensors + JSON, no pickle, gathered to rank 0
under DDP and FSDP. A resumed run therefore replays exactly the draws an uninterrupted run makes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from avctl import env
from avctl.cache import Sample
from avctl.canvas import Canvas, Reference, build_stream, masked_mse, shift_mu
from avctl.errors import BadInput, BadUsage
from avctl.forward import predict
from avctl.io import atomic_write, load_resume_state, save_resume_state
from avctl.lora import add_lora, lora_state_dict, save_lora, target_modules
from avctl.modalities.base import Modality

STATE_VERSION = 1
BASE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class TrainConfig(BaseModel):
    """Everything a run needs; a YAML/TOML file can hold any of it, CLI flags override it."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    data: Path | None = None  # default datasets/<modality>
    out: Path | None = None  # default runs/<modality>
    model: str | None = None  # default $AVCTL_MODEL, else LTX-2
    steps: int | None = Field(default=None, gt=0)  # absolute target step; default: the modality's
    rank: int | None = Field(default=None, gt=0)  # default: the modality's (alpha = rank)
    targets: list[str] | None = None  # LoRA module groups ("V.SA", "V.FF", …); default: the modality's (Table 5)
    # Where the video reference sits on the canvas (avctl.canvas); default: the modality's. Side-by-side needs
    # downscale 1.
    layout: Literal["parallel", "side-by-side"] | None = None
    lr: float = Field(default=1e-4, gt=0)
    lr_end: float = Field(default=1e-5, ge=0)  # linear decay from lr to lr_end over `steps`
    batch_size: int = Field(default=1, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    seed: int = 42
    save_every: int = Field(default=250, gt=0)
    keep_last: int = Field(default=3, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    gradient_checkpointing: bool | None = None  # default: on for CUDA and for any model larger than pocket
    dtype: Literal["bf16", "fp32"] | None = None  # the frozen base's; default bf16 on CUDA, fp32 on CPU
    loader_workers: int | None = Field(default=None, ge=0)  # DataLoader workers; default 2 on CUDA, 0 on CPU
    prefetch_factor: int = Field(default=2, gt=0)  # samples each worker reads ahead
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    # LoRA+ (Hayou et al. 2024; kohya / musubi-tuner's loraplus_lr_ratio): lora_B learns this many times faster
    # than lora_A. 1 = plain AdamW, the paper's recipe.
    loraplus_lr_ratio: float = Field(default=1.0, ge=1.0)
    validate_every: int | None = Field(default=None, gt=0)  # steps between validation samples (None = off)
    tensorboard: bool = False
    # Frozen base quantized weight-only (avctl.quantize): the transformer blocks' Linear layers, and Gemma's decoder
    # in int8 while the text embeddings are precomputed. The LoRA still trains in fp32.
    quantize: Literal["none", "int8", "fp8"] = "none"
    text_encoder_8bit: bool = False
    # Several ranks: "ddp" (each rank holds the model) or "fsdp" (torch FSDP2: blocks sharded over the ranks).
    # Default: fsdp under `accelerate launch` with an FSDP config, else ddp.
    strategy: Literal["ddp", "fsdp"] | None = None

    def fingerprint(self) -> str:
        """What must match for a resume: everything but the step target, output and data location."""
        d = self.model_dump(mode="json", exclude={"steps", "out", "data", "save_every", "keep_last",
                                                   "validate_every", "tensorboard", "loader_workers",
                                                   "prefetch_factor", "strategy"})
        if d["dtype"] is None:
            del d["dtype"]  # the base dtype is checked against the saved state on its own
        if d["targets"] is None:
            del d["targets"]  # so runs from before the option existed still resume
        if d["loraplus_lr_ratio"] == 1.0:
            del d["loraplus_lr_ratio"]  # likewise
        for key, default in (("quantize", "none"), ("text_encoder_8bit", False)):
            if d[key] == default:
                del d[key]  # likewise
        if d["layout"] in (None, "parallel"):
            del d["layout"]  # likewise: train() resolves it to the run's own, so only side-by-side shows
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def with_layout(modality: Modality, layout: str | None) -> Modality:
    """The modality as this run trains it: on `layout` when given (`--layout`), refused (BadUsage) where its
    reference downscale is not 1, since side-by-side puts a full-size reference beside the target."""
    if layout is None or layout == modality.layout:
        return modality
    if layout == "side-by-side" and modality.downscale != 1:
        raise BadUsage(f"--layout side-by-side needs a full-size reference; {modality.name} has downscale "
                       f"{modality.downscale}, so train it on the parallel layout")
    return dataclasses.replace(modality, layout=layout)


# ------------------------------------------------------------------------------------------------ the flow math
def sample_sigmas(generator: torch.Generator, batch: int, target_tokens: int) -> torch.Tensor:
    """[B] σ from a logit-normal located at shift_mu(target tokens), with a 10 % uniform mix-in so the ends of the
    schedule still get trained (ltx-trainer's recipe)."""
    mu = shift_mu(target_tokens)
    normal = torch.randn(batch, generator=generator)
    uniform = torch.rand(batch, generator=generator)
    pick_uniform = torch.rand(batch, generator=generator) < 0.1
    sigma = torch.where(pick_uniform, uniform, torch.sigmoid(normal + mu))
    return sigma.clamp(1e-4, 1.0)


def noised(x: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow: x_t = (1 − σ)·x + σ·ε, σ [B] broadcast over the rest."""
    s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (1 - s) * x + s * noise


def training_canvas(
    modality: Modality,
    transformer: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    sigma: torch.Tensor,
    noise: dict[str, torch.Tensor],
) -> tuple[Canvas, dict[str, torch.Tensor]]:
    """The canvas for one training step and the velocity targets ([B, T_target, C]) of the streams with loss."""
    from avctl.canvas import pack_audio, pack_video

    streams: dict[str, Any] = {}
    targets: dict[str, torch.Tensor] = {}
    for name in ("video", "audio"):
        x = batch[name]
        with_loss = name in modality.trained_streams
        has_ref = name in modality.streams
        refs = [Reference(batch["reference"], modality.downscale if name == "video" else 1)] if has_ref else []
        clean_frames = 0
        if with_loss or has_ref or modality.context == "noised":
            x_in, is_noisy = noised(x, noise[name], sigma), True
            if name == "video" and modality.first_frame_image:
                # The first latent frame is the conditioning image, as `generate --image` gives it: clean, t = 0,
                # no loss (the causal VAE encodes pixel frame 0 alone into it, so the cached target holds it).
                clean_frames = 1
                x_in = torch.cat([x[:, :, :1], x_in[:, :, 1:]], dim=2)
        elif modality.context == "clean":
            x_in, is_noisy = x, False
        else:  # absent
            streams[name] = None
            continue
        streams[name] = build_stream(
            name, transformer, x_in, sigma, refs, noisy=is_noisy, with_loss=with_loss,
            fps=float(batch["fps"]), layout=modality.layout, clean_frames=clean_frames,
        )
        if with_loss:
            velocity = noise[name] - x
            targets[name] = pack_video(velocity) if name == "video" else pack_audio(velocity)
    canvas = Canvas(streams["video"], streams["audio"], direction=modality.strength_direction)
    return canvas, targets


def schedule_tokens(modality: Modality, batch: dict[str, torch.Tensor]) -> int:
    """Target token count that sets the σ shift: the video target when video is generated, else the audio."""
    v = batch["video"]
    if "video" in modality.trained_streams or modality.context == "noised":
        return int(v.shape[2] * v.shape[3] * v.shape[4])
    return int(batch["audio"].shape[2])


def step_loss(
    modality: Modality,
    transformer: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    sigma: torch.Tensor,
    noise: dict[str, torch.Tensor],
    forward: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the batch (summed over the streams with loss) and the per-stream values for logging.
    `forward`: what the transformer is called through (a DDP wrapper); default the transformer itself."""
    canvas, targets = training_canvas(modality, transformer, batch, sigma, noise)
    video_pred, audio_pred = predict(
        transformer, canvas, batch["text_video"], batch["text_audio"], batch["text_mask"], forward=forward
    )
    preds = {"video": video_pred, "audio": audio_pred}
    total = torch.zeros((), device=sigma.device)
    parts: dict[str, float] = {}
    for name, target in targets.items():
        sc = canvas.stream(name)
        pred = sc.target(preds[name])
        loss = masked_mse(pred, target, sc.target(sc.loss_mask)).mean()
        total = total + loss
        parts[f"loss_{name}"] = float(loss.detach())
    return total, parts


# ------------------------------------------------------------------------------------------------ data
def compatible_groups(samples: list[Sample]) -> list[list[int]]:
    """Indices of `samples` grouped by what must match to stack them into one batch: fps and every tensor's shape
    (clips of another frame rate have another audio length). One group when the dataset is uniform."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, s in enumerate(samples):
        key = (s.fps, *(tuple(getattr(s, n).shape) for n in ("video", "audio", "reference", "text_video")))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def collate(samples: list[Sample], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch in fp32 (the cache stores bf16; noise, σ-mixing and the loss run in fp32, `predict` casts the
    transformer's inputs to the base's dtype)."""
    def stack(name: str) -> torch.Tensor:
        return torch.stack([getattr(s, name) for s in samples]).to(device, torch.float32)

    return {name: stack(name) for name in ("video", "audio", "reference", "text_video", "text_audio", "text_mask")} | {
        "fps": samples[0].fps
    }


class SampleSource(Protocol):
    """What `train` reads samples from: a list of `Sample`s or `cache.CachedSamples` (read from disk per item)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class _RunOrder(torch.utils.data.Sampler[int]):
    """Yields the indices the run's generator drew, from the cursor on; set anew at each epoch."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _as_is(item: Sample) -> Sample:
    return item


class SampleStream:
    """Samples in exactly the run's order, read ahead by a DataLoader (`workers` processes, `prefetch` items each;
    0 workers reads in the training process). The order is drawn in the training process as always, so the
    generator's draws — and an exact resume — do not depend on the loader."""

    def __init__(self, data: SampleSource, workers: int, prefetch: int) -> None:
        self.sampler = _RunOrder()
        extra: dict[str, Any] = {"prefetch_factor": prefetch, "persistent_workers": True} if workers else {}
        self.loader = torch.utils.data.DataLoader(
            data, batch_size=None, sampler=self.sampler, collate_fn=_as_is, num_workers=workers, **extra
        )
        self._it: Iterator[Sample] = iter(())

    def start(self, indices: list[int]) -> None:
        self.sampler.indices = indices
        self._it = iter(self.loader)

    def next(self) -> Sample:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())
        self.loader = None  # type: ignore[assignment]  # shuts persistent workers down


def default_checkpointing(transformer: torch.nn.Module, device: torch.device) -> bool:
    """Gradient checkpointing by default on CUDA and for any transformer larger than pocket's (CPU too)."""
    return device.type == "cuda" or sum(p.numel() for p in transformer.parameters()) > pocket_parameters()


@functools.cache
def pocket_parameters() -> int:
    """The pocket transformer's parameter count, from its config on the meta device (nothing loaded); the count of
    the shipped pocket where its files are missing."""
    from accelerate import init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel

    from avctl.backbone import POCKET_DIR

    try:
        config = json.loads((POCKET_DIR / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return 549_104
    with init_empty_weights():
        model = LTX2VideoTransformer3DModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def draw_noise(generator: torch.Generator, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Noise for both streams of a batch from `generator` (on CPU, so CPU and GPU runs draw the same numbers)."""
    out = {}
    for name in ("video", "audio"):
        shape = tuple(batch[name].shape)
        out[name] = torch.randn(shape, generator=generator).to(batch[name].device, batch[name].dtype)
    return out


def slot_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of one sample's σ and noise: keyed by the run's seed, the step (0-based) and the sample's slot
    in the global batch (world × batch × grad_accum), not by the rank that trains it."""
    digest = hashlib.blake2b(f"{seed}:{step}:{slot}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def draw_slots(
    seed: int, step: int, slots: list[int], batch: dict[str, torch.Tensor], target_tokens: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """σ [B] and noise for a batch whose rows sit at `slots` of the global batch (drawn on CPU, so CPU and GPU
    runs draw the same numbers)."""
    sigmas, noise = [], {"video": [], "audio": []}
    for slot in slots:
        g = slot_generator(seed, step, slot)
        sigmas.append(sample_sigmas(g, 1, target_tokens))
        for name in ("video", "audio"):
            noise[name].append(torch.randn(tuple(batch[name].shape[1:]), generator=g))
    device = batch["video"].device
    return (torch.cat(sigmas).to(device),
            {k: torch.stack(v).to(device, batch[k].dtype) for k, v in noise.items()})


def linear_lr(step: int, total: int, lr: float, lr_end: float) -> float:
    """LR for optimizer step `step` (0-based): linear from lr to lr_end over `total` steps."""
    if total <= 1:
        return lr
    return lr + (lr_end - lr) * min(step, total - 1) / (total - 1)


# ------------------------------------------------------------------------------------------------ state
def save_state(
    state_dir: Path,
    step: int,
    lora: dict[str, torch.Tensor],
    moments: dict[str, dict[str, Any]],
    generator: torch.Generator,
    order: list[int],
    cursor: int,
    fingerprint: str,
    run_info: dict[str, Any] | None = None,
) -> None:
    """Everything an exact resume needs (`moments`: `gather_moments`'s), in `avctl.io.save_resume_state`'s format:
    `state_dir/state.json` naming `state_dir/state_<step>.safetensors`."""
    meta = {"version": STATE_VERSION, "fingerprint": fingerprint, "order": order, "cursor": cursor,
            **(run_info or {})}  # run_info: base_dtype, gradient_checkpointing, ...
    save_resume_state(state_dir / "state", step, {f"lora.{k}": v for k, v in lora.items()}, moments, generator,
                      meta, "avctl-train-state")


def load_state(state_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    return load_resume_state(state_dir / "state")


# ------------------------------------------------------------------------------------------------ distributed
def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on this rank's CPU: an FSDP2 shard (DTensor) is all-gathered first — a collective, so every
    rank calls it in the same order."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().to("cpu", torch.float32).contiguous()


class Ranks:
    """The ranks of a run from the launcher's environment (torchrun / `accelerate launch` set WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT). Each rank uses its own GPU (cuda:LOCAL_RANK), or the CPU with gloo. One process
    is world size 1 and every call below is a no-op. The process group starts in `start()`, which the CLI calls
    only after the latent cache is complete: nothing slow ever runs under a collective timeout."""

    def __init__(self, start: bool = True) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world = int(env.WORLD_SIZE.get("1"))
        self.rank = int(env.RANK.get("0"))
        self.local_rank = int(env.LOCAL_RANK.get("0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if start:
            self.start()

    def start(self) -> None:
        if self.world > 1 and not self.dist.is_initialized():
            self.dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return float(t) / self.world

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out


def default_strategy() -> Literal["ddp", "fsdp"]:
    """fsdp under `accelerate launch --config_file configs/accelerate/fsdp.yaml` (it sets ACCELERATE_USE_FSDP),
    else ddp."""
    return "fsdp" if env.ACCELERATE_USE_FSDP.get("").lower() in ("1", "true") else "ddp"


def check_strategy(config: TrainConfig, world: int) -> None:
    """What FSDP cannot run, refused before anything loads."""
    if world == 1 or (config.strategy or default_strategy()) != "fsdp":
        return
    if config.optimizer == "adamw8bit":
        raise BadUsage("optimizer adamw8bit does not take FSDP's sharded parameters: use adamw with --strategy fsdp")
    if config.quantize != "none":
        raise BadUsage(f"--quantize {config.quantize} is not sharded by FSDP here: use --strategy ddp (each GPU then "
                       "holds the quantized base), or --quantize none with --strategy fsdp")
    if config.validate_every:
        raise BadUsage("--validate-every needs the whole model on one rank: use --strategy ddp, or sample a "
                       "checkpoint with `avctl sample` afterwards")


def shard(transformer: torch.nn.Module, ranks: Ranks) -> None:
    """FSDP2: each LTX-2 transformer block, then the root (the rest: patchify, norms, projections), fully sharded
    over the ranks. Called after the LoRA is added, so the LoRA parameters are sharded with their blocks. Under
    `accelerate launch` the config's wrap class must be the block's, and its reshard_after_forward is honoured
    (false: the gathered weights stay until the backward, SHARD_GRAD_OP)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    block_class = type(transformer.transformer_blocks[0]).__name__
    wrap = env.FSDP_TRANSFORMER_CLS_TO_WRAP.get()
    if wrap and wrap != block_class:
        raise BadUsage(f"accelerate config: fsdp_transformer_layer_cls_to_wrap is {wrap!r}; avctl shards each "
                       f"{block_class}: set it to that (configs/accelerate/fsdp.yaml)")
    reshard = env.FSDP_RESHARD_AFTER_FORWARD.get("true").lower() not in ("false", "0", "shard_grad_op")
    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    for block in transformer.transformer_blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(transformer, mesh=mesh, reshard_after_forward=reshard)


def gather_moments(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, dict[str, Any]]:
    """AdamW's moments by parameter name, whole and on the CPU (gathered from every rank's shard under FSDP)."""
    state = optimizer.state_dict()["state"]
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        st = state.get(i, {})
        if st:
            out[name] = {"exp_avg": full_tensor(st["exp_avg"]), "exp_avg_sq": full_tensor(st["exp_avg_sq"]),
                         "step": float(st["step"])}
    return out


def make_optimizer(transformer: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, list[str]]:
    """AdamW (bitsandbytes' 8-bit AdamW when asked and installed; a clear error otherwise) over the trainable
    parameters, with peft's LoRA+ groups when `loraplus_lr_ratio` > 1. Each group keeps its LR multiple in
    "lr_ratio" for the schedule. Returns the optimizer and the parameter names in its order (the resume state is
    saved by name)."""
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise BadUsage("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (CUDA only)") from exc
        optimizer_cls: type[torch.optim.Optimizer] = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    named = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    if config.loraplus_lr_ratio == 1.0:
        optimizer = optimizer_cls([p for _, p in named], lr=config.lr, weight_decay=config.weight_decay)
    else:
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(transformer, optimizer_cls, lr=config.lr,
                                              loraplus_lr_ratio=config.loraplus_lr_ratio,
                                              loraplus_weight_decay=config.weight_decay,
                                              weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["lr_ratio"] = group["lr"] / config.lr
    name_of = {id(p): n for n, p in named}
    return optimizer, [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed and asked for), written by the main rank."""

    def __init__(self, out: Path, tensorboard: bool, main: bool) -> None:
        self.path = out / "metrics.jsonl"
        self.main = main
        self.writer = None
        if tensorboard and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise BadUsage("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
            self.writer = SummaryWriter(str(out / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"train/{k}", v, row["step"])
            self.writer.flush()


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class TrainResult:
    out: Path
    lora_path: Path
    steps: int
    resumed_from: int
    losses: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "lora": str(self.lora_path),
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "seconds": round(self.seconds, 3),
        }


def train(
    config: TrainConfig,
    modality: Modality,
    samples: SampleSource,
    transformer: torch.nn.Module,
    model_meta: dict[str, Any],
    resume: bool = True,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    validate: Callable[[int], None] | None = None,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train `modality`'s LoRA on cached `samples` (a list, or `cache.CachedSamples` streamed from disk through a
    DataLoader). The frozen base runs in `config.dtype` (default: its dtype as given), the LoRA, its gradients and
    AdamW moments in fp32 whatever the base. `stop_after` abandons the run right after that step without
    saving anything more — the test hook that stands for a kill. `validate(step)` runs every
    `config.validate_every` steps on the main rank.

    Several ranks: every rank draws the same data order; each step's global batch (world × batch × grad_accum
    samples) is formed first and split — micro-step m, rank r takes slots m·world·batch + r·batch … + batch — and
    each rank's loader reads only its own samples. The LoRA gradients are averaged by torch DDP, or the model is
    sharded with FSDP2 (`config.strategy`). The state is gathered to rank 0, which writes it."""
    ranks = ranks or Ranks()
    modality = with_layout(modality, config.layout)
    # The run's layout is part of what a resume must match, however it was chosen.
    config = config.model_copy(update={"layout": modality.layout})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    total = config.steps or modality.steps
    rank = config.rank or modality.rank
    strategy = (config.strategy or default_strategy()) if ranks.world > 1 else "single"
    on_meta = next(transformer.parameters()).device.type == "meta"
    device = ranks.device if ranks.world > 1 else next(transformer.parameters()).device
    if len(samples) == 0:
        raise BadInput(f"{config.data}: the dataset has no samples")
    check_strategy(config, ranks.world)
    # FSDP with the weights read by rank 0 alone: the other ranks pass the transformer built on `meta`, and receive
    # their shards from rank 0 once it is sharded.
    from_rank0 = strategy == "fsdp" and any(ranks.gather(on_meta))
    if on_meta and not from_rank0:
        raise BadUsage("a transformer on the meta device trains only under --strategy fsdp on several ranks")
    if from_rank0 and not ranks.main:
        rank0_dtype = ranks.gather(None)[0]
        transformer.to(rank0_dtype)
    elif from_rank0:
        ranks.gather(BASE_DTYPES[config.dtype] if config.dtype else next(transformer.parameters()).dtype)
    if config.dtype is not None and next(transformer.parameters()).dtype != BASE_DTYPES[config.dtype]:
        from avctl.backbone import _quiet_empty_fp32_warning

        with _quiet_empty_fp32_warning(transformer):
            transformer.to(BASE_DTYPES[config.dtype])
    base_dtype = next(transformer.parameters()).dtype

    if config.targets:
        target_modules(config.targets)  # BadInput naming an unknown group before anything is written
        modality = dataclasses.replace(modality, targets=tuple(config.targets))
    torch.manual_seed(config.seed)  # PEFT draws the LoRA A init from the global generator: the same on every rank
    add_lora(transformer, modality.targets, rank)
    use_ckpt = config.gradient_checkpointing
    if use_ckpt is None:
        use_ckpt = default_checkpointing(transformer, device)
    if use_ckpt:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    model: torch.nn.Module = transformer  # what the forward is called through
    if strategy == "fsdp":
        whole = transformer.state_dict() if from_rank0 and ranks.main else {}
        shard(transformer, ranks)
        if from_rank0:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            if on_meta:
                transformer.to_empty(device=device)
            set_model_state_dict(transformer, whole, options=StateDictOptions(full_state_dict=True,
                                                                               broadcast_from_rank0=True))
        del whole
    elif strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Every rank built the same base and seeded LoRA: no start-up broadcast of the frozen weights. Some LoRA
        # modules may not reach the loss (e.g. --targets A.FF on a video-only loss: the last block's audio path),
        # so DDP looks for unused parameters rather than wait for their gradients.
        model = DistributedDataParallel(transformer, device_ids=[device.index] if device.type == "cuda" else None,
                                        init_sync=False, find_unused_parameters=True)
    optimizer, names = make_optimizer(transformer, config)  # after sharding: FSDP2 replaces the parameters
    params = [p for group in optimizer.param_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(config.seed)
    fingerprint = config.fingerprint()

    step, cursor, order = 0, 0, torch.randperm(len(samples), generator=generator).tolist()
    state_dir = out / "state"
    loaded = load_state(state_dir) if resume else None
    if loaded is not None:
        meta, tensors = loaded
        if meta["fingerprint"] != fingerprint:
            raise BadUsage(
                f"{state_dir}: saved state is from a different configuration; pass --no-resume to start over "
                "or --out to train elsewhere"
            )
        if meta.get("base_dtype", str(base_dtype)) != str(base_dtype):  # states from before it was recorded pass
            raise BadUsage(
                f"{state_dir}: saved over a {meta['base_dtype']} base, now {base_dtype}; pass the same --dtype, "
                "or --no-resume"
            )
        if meta["torch_threads"] != torch.get_num_threads():
            raise BadUsage(
                f"{state_dir}: saved with {meta['torch_threads']} torch threads, now {torch.get_num_threads()}; "
                f"set OMP_NUM_THREADS={meta['torch_threads']} for a bit-exact resume, or pass --no-resume"
            )
        saved_world = meta.get("world_size", 1)
        if saved_world != ranks.world and ranks.main:
            import warnings

            warnings.warn(f"{state_dir}: saved by {saved_world} rank(s), resumed by {ranks.world}: training goes on "
                          "from the same LoRA, optimizer state and data position, but the global batch is now "
                          f"{ranks.world} × {config.batch_size} × {config.grad_accum} samples, so the run is no "
                          "longer bit-identical to an uninterrupted one", stacklevel=2)
        _restore(transformer, optimizer, names, tensors, meta)
        generator.set_state(tensors["generator"])
        step, cursor, order = meta["step"], meta["cursor"], meta["order"]
    resumed_from = step
    if ranks.main:
        _truncate_metrics(out / "metrics.jsonl", step)
    log = MetricsLog(out, config.tensorboard, ranks.main)
    if step >= total:
        raise BadUsage(f"{out}: already at step {step} ≥ --steps {total}; raise --steps to train further")

    losses: list[float] = []
    per_rank, world = config.batch_size, ranks.world
    micro = per_rank * world  # one micro-step's global batch

    def own(order: list[int], cursor: int, offset: int) -> list[int]:
        """This rank's samples in `order` from `cursor` on, when `cursor` sits at `offset` of a micro-batch."""
        return [order[i] for i in range(cursor, len(order))
                if (offset + i - cursor) % micro // per_rank == ranks.rank]

    workers = config.loader_workers if config.loader_workers is not None else (2 if device.type == "cuda" else 0)
    stream = SampleStream(samples, workers, config.prefetch_factor)
    stream.start(own(order, cursor, 0))
    start = time.perf_counter()
    while step < total:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = linear_lr(step, total, config.lr, config.lr_end) * group["lr_ratio"]
        optimizer.zero_grad(set_to_none=True)
        parts_sum: dict[str, float] = {}
        loss_sum = 0.0
        seen: list[int] = []
        for m in range(config.grad_accum):
            items, slots = [], []
            for j in range(micro):
                if cursor >= len(order):
                    order, cursor = torch.randperm(len(samples), generator=generator).tolist(), 0
                    stream.start(own(order, cursor, j))
                if j // per_rank == ranks.rank:
                    seen.append(order[cursor])
                    items.append(stream.next())
                    slots.append(m * micro + j)
                cursor += 1
            # Samples of another fps (hence audio length) cannot share a tensor: each group of compatible ones
            # runs on its own, weighted by its share, which is the batch's mean loss all the same.
            groups = compatible_groups(items)
            for g, members in enumerate(groups):
                batch = collate([items[i] for i in members], device)
                sigma, noise = draw_slots(config.seed, step, [slots[i] for i in members], batch,
                                          schedule_tokens(modality, batch))
                last = m == config.grad_accum - 1 and g == len(groups) - 1
                share = len(members) / len(items) / config.grad_accum
                with _grad_sync(model, strategy, last), \
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss, parts = step_loss(modality, transformer, batch, sigma, noise, forward=model)
                    if not torch.isfinite(loss):
                        raise BadInput(
                            f"non-finite loss at step {step + 1}; stopping. The last saved LoRA in {out} is intact "
                            "— lower --lr or check the dataset"
                        )
                    (loss * share).backward()
                loss_sum += float(loss.detach()) * share
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v * share
            del items
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        step += 1
        loss_sum = ranks.mean(loss_sum)
        parts_sum = {k: ranks.mean(v) for k, v in parts_sum.items()}
        losses.append(loss_sum)
        row = {"step": step, "loss": loss_sum, **parts_sum, "lr": optimizer.param_groups[0]["lr"],
               "step_time_s": time.perf_counter() - t0, "world_size": world, "strategy": strategy,
               "samples": ranks.gather(seen)}
        log.write(row)
        if progress and ranks.main:
            progress(step, total, row)
        if validate is not None and config.validate_every and step % config.validate_every == 0 and ranks.main:
            transformer.eval()
            validate(step)
            transformer.train()
        if step % config.save_every == 0 or step == total:
            lora, moments = lora_state_dict(transformer), gather_moments(optimizer, names)  # every rank
            if ranks.main:
                save_lora(out / "checkpoints" / f"step_{step:05d}.safetensors", lora, modality.downscale,
                          lora_metadata(modality, rank, step, model_meta, config))
                _prune_checkpoints(out / "checkpoints", config.keep_last)
                save_state(state_dir, step, lora, moments, generator, order, cursor, fingerprint,
                           {"base_dtype": str(base_dtype), "gradient_checkpointing": use_ckpt,
                            "world_size": world, "strategy": strategy})
            del lora, moments
        ranks.barrier()
        if stop_after is not None and step >= stop_after:
            break
    stream.close()

    lora_path = out / "lora.safetensors"
    if step == total:
        lora = lora_state_dict(transformer)
        if ranks.main:
            save_lora(lora_path, lora, modality.downscale, lora_metadata(modality, rank, step, model_meta, config))
    ranks.barrier()
    return TrainResult(out, lora_path, step, resumed_from, losses, time.perf_counter() - start)


def _grad_sync(model: torch.nn.Module, strategy: str, sync: bool) -> Any:
    """Gradient accumulation without communication until the last micro-step (DDP's no_sync, FSDP2's
    set_requires_gradient_sync)."""
    import contextlib

    if sync or strategy == "single":
        return contextlib.nullcontext()
    if strategy == "ddp":
        return model.no_sync()  # type: ignore[operator]
    model.set_requires_gradient_sync(False)  # type: ignore[operator]

    @contextlib.contextmanager
    def fsdp_no_sync() -> Iterator[None]:
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]

    return fsdp_no_sync()


def _restore(transformer, optimizer, names, tensors, meta) -> None:
    """The saved whole tensors back onto the live parameters and AdamW state; under FSDP2 each rank keeps the shard
    of its own parameters (no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        full = full.to(param.device, param.dtype)
        if isinstance(param, DTensor):
            return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        return full

    by_name = dict(transformer.named_parameters())
    lora = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
    # PEFT state-dict keys drop the adapter name; map them back onto the live parameters.
    with torch.no_grad():
        for name in names:
            key = name.replace(".avctl.", ".")
            by_name[name].copy_(like(by_name[name], lora[key]))
    opt_state = {}
    for i, name in enumerate(names):
        if f"exp_avg.{name}" in tensors:
            opt_state[i] = {
                "step": torch.tensor(meta["adam_steps"][name]),
                "exp_avg": like(by_name[name], tensors[f"exp_avg.{name}"]),
                "exp_avg_sq": like(by_name[name], tensors[f"exp_avg_sq.{name}"]),
            }
    sd = optimizer.state_dict()
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows past `step` (left by a run killed after its last save), so a resumed log has each step once."""
    if not path.is_file():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    atomic_write(path, "".join(r + "\n" for r in rows))


def _prune_checkpoints(folder: Path, keep: int) -> None:
    files = sorted(folder.glob("step_*.safetensors"))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


def lora_metadata(modality: Modality, rank: int, steps: int, model_meta: dict[str, Any], config: TrainConfig):
    from avctl.canvas import AUDIO_REF_TIME

    return {
        "modality": modality.name,
        "streams": list(modality.streams),
        "loss_streams": list(modality.trained_streams),
        "context": modality.context,
        "layout": modality.layout,
        "strength_direction": modality.strength_direction,
        **({"first_frame_image": True} if modality.first_frame_image else {}),
        "audio_ref_time": AUDIO_REF_TIME,
        "rank": rank,
        "alpha": rank,
        "targets": list(modality.targets),
        "steps": steps,
        **({"extractor_options": opts} if (opts := model_meta.get("extractor_options")) else {}),
        "base_model": model_meta.get("model_id"),
        "base_config_hash": model_meta.get("config_hash"),
        "train_config_hash": config.fingerprint(),
        "avctl_version": _version(),
    }


def _version() -> str:
    from avctl import __version__

    return __version__
