"""Controlled generation: the flow-matching Euler sampler on the parallel canvas, with LoRAs and strengths.

Each step builds the same canvas training built — noisy target tokens at σ·1000, clean reference tokens at 0,
reference coordinates stretched by the LoRA's downscale factor — and moves the target along the predicted velocity:
x ← x + (σ_next − σ)·v. The σ schedule is shifted by the TARGET token count, exactly as in training, unless the
model is a distilled one (then its fixed 8-step σ list, diffusers' `DISTILLED_SIGMA_VALUES`).

Video and audio LoRAs run in the same joint pass: a video LoRA's control becomes reference tokens on the video
stream, an audio LoRA's (`avctl.streams = ["audio"]`) on the audio stream; each LoRA's references are their own
group. With `composite=True` the video controls are first merged into ONE reference video (`composite_controls`)
that all video LoRAs attend to. A first-frame image is encoded as the target's first latent frame and kept clean:
those tokens carry timestep 0 and are written back after every step (conditioned tokens).

Given media as clean context: `keep_video` (audio for a given video: audio-intensity as trained, speech-ambient's
AV→A mode) encodes the given frames as the video target and keeps them clean — timestep 0, never moved — while the
audio is generated; `keep_audio` (who-is-talking with the user's own speech) does the same for the audio stream. The
σ schedule is then shifted by the generated stream's token count, as in training, and the kept stream is returned
as given (not round-tripped through its VAE).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avctl.canvas import (
    LAYOUTS,
    Canvas,
    Reference,
    build_stream,
    pack_audio,
    pack_video,
    shift_mu,
    shift_sigmas,
    unpack_audio,
    unpack_video,
)
from avctl.errors import AvctlError, BadInput, BadUsage
from avctl.forward import predict
from avctl.lora import LoraFile, load_lora, read_lora

SCHEDULES: tuple[str, ...] = ("auto", "official", "shifted", "distilled")
DEFAULT_STEPS = 30
COMPOSITE_THRESHOLD = 16  # a control pixel counts as drawn (non-black) when any channel is above this
ADAPTER_PREFIX = "avctl_gen_"


# ------------------------------------------------------------------------------------------------ LoRA resolution
def parse_lora_arg(arg: str) -> tuple[str, float]:
    """`NAME_OR_PATH[@WEIGHT]`: the weight is split off the last '@' only when what follows parses as a number."""
    head, sep, tail = arg.rpartition("@")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return arg, 1.0


def resolve_lora(name_or_path: str) -> Path:
    """An existing path, else ./runs/NAME/lora.safetensors, else $AVCTL_HOME/runs/NAME/lora.safetensors."""
    tried = [Path(name_or_path), Path("runs") / name_or_path / "lora.safetensors"]
    from avctl.env import HOME

    home = HOME.get()
    if home:
        tried.append(Path(home) / "runs" / name_or_path / "lora.safetensors")
    for p in tried:
        if p.is_file():
            return p
    raise BadInput(f"LoRA {name_or_path!r} not found; tried: {', '.join(str(p) for p in tried)}")


def open_lora(arg: str) -> tuple[LoraFile, float]:
    name, scale = parse_lora_arg(arg)
    return read_lora(resolve_lora(name)), scale


# ------------------------------------------------------------------------------------------------ strength maps
def strength_tokens(
    grid: tuple[int, int, int],
    temporal: int,
    strength: float,
    strength_map: np.ndarray | None = None,
    ramp: tuple[float, float] | None = None,
) -> float | torch.Tensor:
    """Per-reference-token strengths [1, F'·h·w] for a reference latent grid (F', h, w), or the scalar itself when
    nothing varies (the fast path at 1.0).

    strength_map: grey [F, H, W] or [H, W] in [0, 1] (white = 1), area-averaged onto the latent grid; latent frame 0
    covers pixel frame 0 and latent frame k ≥ 1 covers pixel frames 8k−7 … 8k (the VAE's causal grouping).
    ramp (start, end): linear over latent frames, e.g. (1, 0) fades the reference out over time.
    """
    if strength_map is None and ramp is None:
        return float(strength)
    f, h, w = grid
    values = np.full((f, h, w), float(strength), np.float32)
    if strength_map is not None:
        m = strength_map.astype(np.float32)
        if m.ndim == 2:
            m = m[None]
        per_frame = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA) for x in m])  # [F, h, w]
        latent = np.empty((f, h, w), np.float32)
        n = len(per_frame)
        for k in range(f):
            lo, hi = (0, 1) if k == 0 else (temporal * (k - 1) + 1, temporal * k + 1)
            chunk = per_frame[lo:hi] if lo < n else per_frame[-1:]  # a still image covers every frame
            latent[k] = chunk.mean(axis=0)
        values *= np.clip(latent, 0.0, 1.0)
    if ramp is not None:
        start, end = ramp
        steps = np.linspace(start, end, f, dtype=np.float32) if f > 1 else np.array([start], np.float32)
        values *= steps[:, None, None]
    if not (values.min() >= 0.0 and values.max() <= 1.0):
        raise BadUsage("strength values must lie in [0, 1] (above 1 copies the reference)")
    return torch.from_numpy(values.reshape(1, -1))


# ------------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Guidance:
    """LTX-2's guidance, per stream, as `LTX2Pipeline` applies it (on x0 predictions, delta form):
    x0 = x0_cond + (cfg − 1)(x0_cond − x0_negative) + stg (x0_cond − x0_stg) + (modality − 1)(x0_cond − x0_isolated),
    then rescaled towards x0_cond's standard deviation by `rescale` (diffusers' `rescale_noise_cfg`).
    Each term costs one more model pass per step and is skipped when it is neutral (cfg 1, stg 0, modality 1).
    `cross_timestep` None = the model's own (on for LTX-2.3-style transformers)."""

    cfg: float = 1.0
    audio_cfg: float = 1.0
    stg: float = 0.0
    audio_stg: float = 0.0
    modality: float = 1.0
    audio_modality: float = 1.0
    rescale: float = 0.0
    audio_rescale: float = 0.0
    stg_blocks: tuple[int, ...] = ()
    cross_timestep: bool | None = None

    @property
    def uses_cfg(self) -> bool:
        return self.cfg != 1.0 or self.audio_cfg != 1.0

    @property
    def uses_stg(self) -> bool:
        return (self.stg != 0.0 or self.audio_stg != 0.0) and bool(self.stg_blocks)

    @property
    def uses_modality(self) -> bool:
        return self.modality != 1.0 or self.audio_modality != 1.0

    @property
    def in_x0(self) -> bool:
        """Whether anything beyond plain CFG is on (then the combination runs on x0, as the pipeline's)."""
        return self.uses_stg or self.uses_modality or self.rescale > 0 or self.audio_rescale > 0 or self.uses_cfg


@dataclass(frozen=True)
class Preset:
    """Sampling defaults for one kind of model: σ schedule, steps, guidance. `stg_blocks` are LTX-2's block
    indices (48 blocks); a smaller model gets the block at the same relative depth."""

    name: str
    schedule: str
    steps: int
    guidance: Guidance
    about: str


# From diffusers' LTX2Pipeline (0.42): its call defaults (30 steps, CFG 3 video / 7 audio, STG 1, modality 3,
# rescale 0.7) and its docstrings (STG block 29 for LTX-2.0, 28 for LTX-2.3; use_cross_timestep True is the
# LTX-2.3 behaviour, False the LTX-2.0 one). distilled: DISTILLED_SIGMA_VALUES with no guidance at all (CFG 1),
# the setting of the paper's results.
_OFFICIAL = {"cfg": 3.0, "audio_cfg": 7.0, "stg": 1.0, "audio_stg": 1.0, "modality": 3.0, "audio_modality": 3.0,
             "rescale": 0.7, "audio_rescale": 0.7}
PRESETS: dict[str, Preset] = {
    "ltx2": Preset("ltx2", "official", 30, Guidance(**_OFFICIAL, stg_blocks=(29,), cross_timestep=False),
                   "LTX-2.0 with LTX2Pipeline's guidance"),
    "ltx2.3": Preset("ltx2.3", "official", 30, Guidance(**_OFFICIAL, stg_blocks=(28,), cross_timestep=True),
                     "LTX-2.3 with LTX2Pipeline's guidance"),
    "distilled": Preset("distilled", "distilled", 8, Guidance(),
                        "the distilled checkpoints' 8 fixed sigmas, no guidance (CFG 1): the paper's setting"),
    "plain": Preset("plain", "shifted", 30, Guidance(),
                    "avctl's LoRA-training σ shift (no terminal stretch), no guidance: one model pass per step"),
}
PRESET_CHOICES: tuple[str, ...] = ("auto", *PRESETS)
LTX2_BLOCKS = 48

# LTX-2's scheduler/scheduler_config.json (Lightricks/LTX-2 on the hub, as diffusers' conversion writes it): also
# shipped in avctl/weights/pocket/scheduler/. Used for a model that has no scheduler config of its own (tiny).
LTX2_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05,
    "base_image_seq_len": 1024, "max_image_seq_len": 4096, "shift_terminal": 0.1, "time_shift_type": "exponential",
    "invert_sigmas": False, "stochastic_sampling": False,
}


def model_directory(model_id: str) -> Path | None:
    """The diffusers-format folder a backbone was loaded from (None for `tiny` or an unknown name)."""
    from avctl.backbone import POCKET, POCKET_DIR, TINY

    if model_id == TINY:
        return None
    if model_id == POCKET:
        return POCKET_DIR
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    try:
        from avctl.backbone import _locate

        return _locate(model_id)[0]
    except AvctlError:
        return None


def scheduler_config(backbone: Any) -> tuple[dict[str, Any], str]:
    """(the model's scheduler config, where it came from): its scheduler/scheduler_config.json, else LTX-2's."""
    folder = model_directory(str(backbone.model_id))
    file = folder / "scheduler" / "scheduler_config.json" if folder is not None else None
    if file is not None and file.is_file():
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read {file}: {exc}") from exc
        return {k: v for k, v in data.items() if not k.startswith("_")}, str(file)
    return dict(LTX2_SCHEDULER_CONFIG), "LTX-2's scheduler config (the model has none)"


def detect_preset(backbone: Any) -> str:
    """The preset the model's own files call for: "distilled" when its scheduler config turns dynamic shifting off
    (the distilled checkpoints' config does; diffusers' docs turn it back on to run the full model), "ltx2.3" for
    an LTX-2.3-style transformer (`cross_attn_mod`), else "ltx2". Never the folder name."""
    config, _ = scheduler_config(backbone)
    if not config.get("use_dynamic_shifting", True):
        return "distilled"
    if getattr(backbone.transformer.config, "cross_attn_mod", False):
        return "ltx2.3"
    return "ltx2"


def resolve_preset(preset: str, backbone: Any) -> Preset:
    if preset not in PRESET_CHOICES:
        raise BadUsage(f"--preset {preset!r}: use one of {', '.join(PRESET_CHOICES)}")
    return PRESETS[detect_preset(backbone) if preset == "auto" else preset]


def scale_stg_blocks(blocks: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """A preset's LTX-2 block indices (of 48) for a model with `num_layers` blocks: the same relative depth."""
    if num_layers >= LTX2_BLOCKS:
        return blocks
    return tuple(sorted({min(num_layers - 1, b * num_layers // LTX2_BLOCKS) for b in blocks}))


# ------------------------------------------------------------------------------------------------ schedules
def resolve_schedule(schedule: str, default: str = "shifted") -> str:
    """"auto" → `default` (the preset's schedule); otherwise the named one, checked."""
    if schedule not in SCHEDULES:
        raise BadUsage(f"--schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    return default if schedule == "auto" else schedule


def sigma_schedule(schedule: str, steps: int | None, target_tokens: int,
                   config: dict[str, Any] | None = None) -> torch.Tensor:
    """σ values [steps + 1], from 1 down to 0.

    official: LTX2Pipeline's: linspace(1, 1/steps, steps) through diffusers' FlowMatchEulerDiscreteScheduler with the
    model's scheduler `config` (dynamic exponential shift at μ from the TARGET token count, then the stretch to its
    `shift_terminal`), then 0. shifted: linear 1 → 0 in `steps` steps, LTX-2's exponential shift at μ from the
    TARGET token count (as in LoRA training), no terminal stretch. distilled: the distilled LTX-2 checkpoint's fixed
    list (diffusers' `DISTILLED_SIGMA_VALUES`, from ltx-pipelines) with the terminal 0 appended: 8 steps."""
    if schedule == "distilled":
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        n = len(DISTILLED_SIGMA_VALUES)
        if steps is not None and steps != n:
            raise BadUsage(f"--steps {steps}: the distilled schedule has exactly {n} steps; drop --steps or pass "
                           "--schedule official")
        return torch.tensor([*DISTILLED_SIGMA_VALUES, 0.0], dtype=torch.float32)
    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 1:
        raise BadUsage("--steps must be at least 1")
    if schedule == "official" and steps == 1:
        return torch.tensor([1.0, 0.0])  # the terminal stretch is 0/0 for one step (NaN in diffusers' scheduler)
    if schedule == "official":
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift

        config = dict(LTX2_SCHEDULER_CONFIG if config is None else config)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        mu = calculate_shift(target_tokens, config.get("base_image_seq_len", 1024),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.95),
                             config.get("max_shift", 2.05))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
        return scheduler.sigmas.to(torch.float32)
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift_mu(target_tokens))


# ------------------------------------------------------------------------------------------------ controls
@dataclass
class LoraUse:
    """One LoRA in a generation: the file, its scale (the `@W`), and its control."""

    lora: LoraFile
    scale: float = 1.0
    control: np.ndarray | None = None  # [F, H, W, 3] uint8 video control (any size; resized here)
    control_audio: np.ndarray | None = None  # [2, N] float32 audio control at the backbone's mel rate

    @property
    def stream(self) -> str:
        return (self.lora.avctl.get("streams") or ["video"])[0]

    @property
    def name(self) -> str:
        return self.lora.path.name

    @property
    def layout(self) -> str:
        """The canvas layout the LoRA was trained on (`avctl.layout`); parallel for LoRAs without it."""
        return self.lora.avctl.get("layout") or "parallel"


def video_layout(uses: list[LoraUse]) -> str:
    """The one layout a generation's video references go on, from their LoRAs' metadata: a LoRA is sampled on the
    canvas it was trained on. LoRAs of different layouts share no canvas, and side-by-side needs downscale 1."""
    layouts = set()
    for use in uses:
        if use.stream != "video":
            continue
        if use.layout not in LAYOUTS:
            raise BadInput(f"{use.lora.path}: avctl.layout {use.layout!r} is not one of {', '.join(LAYOUTS)}")
        if use.layout == "side-by-side" and use.lora.downscale != 1:
            raise BadInput(f"{use.lora.path}: avctl.layout side-by-side with reference downscale "
                           f"{use.lora.downscale}; side-by-side needs downscale 1")
        layouts.add(use.layout)
    if len(layouts) > 1:
        raise BadUsage("these LoRAs were trained on different canvas layouts (" + ", ".join(
            f"{u.name}: {u.layout}" for u in uses if u.stream == "video") + "); generate with one layout at a time")
    return layouts.pop() if layouts else "parallel"


def resize_control(frames: np.ndarray, size: tuple[int, int], n_frames: int) -> np.ndarray:
    """Resize a control to (h, w) with INTER_AREA and check its length: longer controls are cut (with a note by
    the caller); shorter ones are an error, since inventing control frames would mislead."""
    h, w = size
    if frames.shape[0] < n_frames:
        raise BadInput(f"control has {frames.shape[0]} frames, the generation needs {n_frames}; pass --frames")
    frames = frames[:n_frames]
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def composite_controls(controls: list[np.ndarray], threshold: int = COMPOSITE_THRESHOLD) -> np.ndarray:
    """Merge same-shape controls [F, h, w, 3] into ONE (the paper's e.g. masked depth overlaid with pose): in list
    order, a later control's non-black pixels — any channel > `threshold` — overwrite what is there."""
    if not controls:
        raise BadUsage("--composite needs at least one video control")
    out = np.array(controls[0], dtype=np.uint8, copy=True)  # [F, h, w, 3]
    for i, c in enumerate(controls[1:], start=1):
        if c.shape != out.shape:
            raise BadUsage(f"--composite: control {i + 1} is {tuple(c.shape)}, control 1 is {tuple(out.shape)}")
        drawn = (c > threshold).any(axis=-1)  # [F, h, w]
        out[drawn] = c[drawn]
    return out


def check_composite(uses: list[LoraUse]) -> int:
    """The shared reference downscale factor of the video LoRAs to composite; BadUsage naming both factors when
    two differ (one canvas has one reference grid)."""
    video = [u for u in uses if u.stream == "video"]
    if not video:
        raise BadUsage("--composite needs at least one video LoRA with a --control")
    first = video[0]
    for other in video[1:]:
        if other.lora.downscale != first.lora.downscale:
            raise BadUsage(
                f"--composite needs equal reference downscale factors: {first.name} has {first.lora.downscale}, "
                f"{other.name} has {other.lora.downscale}; generate them as separate references (drop --composite)"
            )
    return first.lora.downscale


_EXTRACTORS: dict[str, Any] = {}


def control_from_video(
    lora: LoraFile,
    source: np.ndarray,
    fps: float,
    *,
    width: int,
    height: int,
    frames: int,
    seed: int,
    key: str,
    audio: np.ndarray | None = None,
    audio_rate: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Make a LoRA's control from a source video with its modality's extractor (the one `avctl prepare` uses):
    the source [F, H, W, 3] is cut to `frames`, resized/centre-cropped to width×height (the output size) and
    handed over as a `modalities.base.Clip` whose reference size is the output size ÷ the LoRA's downscale.
    Returns (video control [F, h, w, 3] uint8 | None, audio control [2, N] float32 at `audio_rate` | None)."""
    from avctl.media import fit_to_bucket
    from avctl.modalities.base import Clip, get_modality

    name = lora.avctl.get("modality")
    if not isinstance(name, str) or not name:
        raise BadUsage(f"{lora.path}: no avctl.modality in its metadata, so no extractor is known; give --control")
    modality = get_modality(name)
    if modality.extractor is None or modality.paired:  # a paired modality's extractor builds training pairs
        note = f" ({modality.extractor_note})" if modality.extractor_note else ""
        raise BadUsage(f"--from-video: modality {name!r} ({lora.path.name}) has no extractor for generation{note}; "
                       "make the control yourself and pass it with --control")
    if len(source) < frames:
        raise BadInput(f"{key}: the source video has {len(source)} frames, the generation needs {frames}; pass "
                       "--frames")
    s = lora.downscale
    clip = Clip(frames=fit_to_bucket(source[:frames], width, height), fps=fps, key=key, seed=seed,
                reference_size=(height // s, width // s), audio=audio, sample_rate=audio_rate)
    options = lora.avctl.get("extractor_options") or {}  # as the LoRA's dataset was prepared (e.g. canny --line-width)
    if not isinstance(options, dict):
        raise BadInput(f"{lora.path}: avctl.extractor_options must be a mapping; fix or drop that metadata key")
    cache_key = json.dumps([name, options], sort_keys=True)
    if cache_key not in _EXTRACTORS:
        try:
            _EXTRACTORS[cache_key] = modality.extractor(**options)
        except (TypeError, BadUsage) as exc:  # the LoRA's metadata is at fault, not the command line
            raise BadInput(f"{lora.path}: the {name!r} extractor does not take the recorded options {options} "
                           f"({exc}); give --control") from exc
    extractor = _EXTRACTORS[cache_key]
    try:
        control = extractor(clip)
    except AvctlError:
        raise
    except Exception as exc:  # an extractor bug becomes one line, not a traceback
        raise AvctlError(f"{key}: the {name!r} extractor failed: {type(exc).__name__}: {exc}") from exc
    video = control.frames if control.frames is not None else None
    wav = control.audio
    if wav is not None and audio_rate and control.sample_rate and control.sample_rate != audio_rate:
        import torchaudio

        wav = torchaudio.functional.resample(torch.from_numpy(wav), control.sample_rate, audio_rate).numpy()
    if video is None and wav is None:
        raise AvctlError(f"{key}: the {name!r} extractor returned no control")
    return video, None if wav is None else wav.astype(np.float32)


# ------------------------------------------------------------------------------------------------ two stages
@dataclass
class TwoStage:
    """LTX-2's two-stage generation, as diffusers' LTX-2 docs run it: stage 1 samples at half the width and height
    (the preset's schedule and guidance); its video latents go through the latent upsampler (×2, on denormalised
    latents, as `LTX2LatentUpsamplePipeline`); stage 2 re-noises them and the stage-1 audio to σ = 0.909375
    (`noise_scale`, noise drawn in packed token shape from a fresh generator seeded with the seed, as
    `LTX2Pipeline.prepare_latents`) and denoises over `STAGE_2_DISTILLED_SIGMA_VALUES` (3 steps) with the distilled
    LoRA added to the user's and no guidance. References are re-encoded at each stage's size."""

    upsampler: Any  # diffusers' LTX2LatentUpsamplerModel
    distilled_lora: LoraFile
    distilled_scale: float = 1.0


def load_upsampler(path: Path, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """diffusers' LTX2LatentUpsamplerModel from a folder holding its config.json, or a model folder with a
    latent_upsampler/ subfolder (Lightricks/LTX-2's layout)."""
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    folder = Path(path)
    if not (folder / "config.json").is_file() and (folder / "latent_upsampler" / "config.json").is_file():
        folder = folder / "latent_upsampler"
    if not (folder / "config.json").is_file():
        raise BadInput(f"--upsampler {path}: no config.json there or in its latent_upsampler/ folder")
    try:
        model = LTX2LatentUpsamplerModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise BadInput(f"--upsampler {path}: cannot load it ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    return model.to(device).eval()


def upsample_latents(backbone: Any, upsampler: Any, latents: torch.Tensor) -> torch.Tensor:
    """Normalised video latents [B, C, F, H, W] → normalised latents at twice the height and width: denormalised
    for the upsampler (it works on the VAE's own latents), normalised again for stage 2."""
    from diffusers import LTX2Pipeline

    vae = backbone.vae
    with torch.no_grad():
        z = LTX2Pipeline._denormalize_latents(latents.float(), vae.latents_mean, vae.latents_std,
                                              vae.config.scaling_factor)
        up = upsampler(z.to(upsampler.dtype)).float()
        return LTX2Pipeline._normalize_latents(up, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)


# ------------------------------------------------------------------------------------------------ generation
@dataclass
class Generation:
    frames: np.ndarray  # [F, H, W, 3] uint8
    audio: np.ndarray  # [2, N] float32
    sample_rate: int
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    final_latents: dict[str, torch.Tensor] = field(default_factory=dict)
    schedule: str = "shifted"
    steps: int = 0
    warnings: list[str] = field(default_factory=list)
    # Every sampling choice as resolved (preset, σ list, guidance, cross timestep, negative prompt), for the sidecar.
    settings: dict[str, Any] = field(default_factory=dict)
    # The video control as fed to the model (the first video LoRA's, or the composite), at reference size: the
    # left half of a preview. None without a video reference.
    control: np.ndarray | None = None  # [F, h, w, 3] uint8


def _prepare_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A first-frame image [H, W, 3] (or [H, W] grey) uint8 → [1, height, width, 3], resized to cover and
    centre-cropped (as buckets are)."""
    from avctl.media import fit_to_bucket

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise BadInput(f"the first-frame image must be uint8 RGB [H, W, 3], got {img.dtype} {tuple(img.shape)}")
    return fit_to_bucket(img[None], width, height)


def _prepare_keep_video(frames_in: np.ndarray, width: int, height: int, frames: int) -> np.ndarray:
    """Given video for --keep-video → [frames, height, width, 3] uint8 (cover-resized and centre-cropped)."""
    from avctl.media import fit_to_bucket

    video = np.asarray(frames_in)
    if video.ndim != 4 or video.shape[3] != 3 or video.dtype != np.uint8:
        raise BadInput(f"--keep-video must be uint8 RGB frames [F, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    if len(video) < frames:
        raise BadInput(f"--keep-video has {len(video)} frames, the generation needs {frames}; pass --frames")
    return fit_to_bucket(video[:frames], width, height)


def _prepare_keep_audio(wav_in: np.ndarray, samples: int, backbone: Any) -> np.ndarray:
    """Given audio for --keep-audio → [2, samples] float32 at the backbone's mel rate."""
    wav = np.asarray(wav_in, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[0] not in (1, 2):
        raise BadInput(f"--keep-audio must be [channels, samples] with 1 or 2 channels, got {tuple(wav.shape)}")
    if wav.shape[1] < samples:
        have = wav.shape[1] / backbone.audio_sample_rate
        raise BadInput(f"--keep-audio lasts {have:.2f} s, the generation {samples / backbone.audio_sample_rate:.2f} "
                       "s; give a longer track or fewer --frames")
    wav = wav[:, :samples]
    return np.ascontiguousarray(np.repeat(wav, 2, axis=0) if wav.shape[0] == 1 else wav)


def read_keep_audio(path: Path, backbone: Any, seconds: float | None = None) -> np.ndarray:
    """A --keep-audio file's sound [2, N] at the backbone's mel rate; BadInput when the file has no audio stream."""
    from avctl import media

    wav = media.read_audio(Path(path), backbone.audio_sample_rate, 2, max_seconds=seconds)
    if wav is None:
        raise BadInput(f"{path}: has no audio stream; --keep-audio needs a .wav or a video with sound")
    return wav


def generate(
    backbone: Any,
    prompt: str,
    loras: list[LoraUse],
    *,
    width: int,
    height: int,
    frames: int,
    fps: float = 24.0,
    strength: float = 1.0,
    strength_map: np.ndarray | None = None,
    strength_ramp: tuple[float, float] | None = None,
    steps: int | None = None,
    cfg: float = 1.0,
    seed: int = 42,
    negative_prompt: str = "",
    use_references: bool = True,
    composite: bool = False,
    first_frame: np.ndarray | None = None,
    schedule: str = "auto",
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    keep_video: np.ndarray | None = None,
    keep_audio: np.ndarray | None = None,
    preset: str | None = None,
    guidance: Guidance | None = None,
    two_stage: TwoStage | None = None,
) -> Generation:
    """Generate video + audio from a prompt with control LoRAs (video and audio ones, in one joint pass).

    `use_references=False` runs the same LoRAs with no reference tokens at all (what strength 0 must equal).
    `composite=True` merges the video LoRAs' controls into one reference group (`composite_controls`).
    `first_frame` [H, W, 3] uint8 conditions the first frame (kept clean at timestep 0 throughout).
    `preset` ("auto" = the model's own, `detect_preset`; or a name in PRESETS) sets the schedule, steps and
    guidance; None keeps avctl's plain sampler with `cfg` on both streams. `guidance` overrides the preset's.
    `schedule`: "auto" (the preset's) | "official" | "shifted" | "distilled"; `steps` None = the preset's.
    `two_stage` (TwoStage): the preset's sampling at half size, the latent upsampler, then 3 distilled steps.
    `warn` receives one-line notes (a control cut to length, a LoRA made for another model); they are also kept
    in `Generation.warnings`.
    `keep_video` [F, H, W, 3] uint8 (any size; fitted to width×height like a bucket, cut to `frames`): a given video
    kept as clean context at t = 0 while only the audio is generated. `keep_audio` [C, N] float32 at the backbone's
    `audio_sample_rate` (cut to the duration): a given sound track kept clean while only the video is generated."""
    if not 0.0 <= strength <= 1.0:
        raise BadUsage(f"--strength {strength} is outside [0, 1] (above 1 copies the reference)")
    if steps is not None and steps < 1:
        raise BadUsage("--steps must be at least 1")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if warn is not None:
            warn(message)

    t_start = time.perf_counter()
    transformer = backbone.transformer
    grid = backbone.latent_grid(frames, height, width)
    duration = frames / fps
    audio_frames = backbone.audio_latent_frames(duration)
    if keep_video is not None and keep_audio is not None:
        raise BadUsage("--keep-video and --keep-audio together leave nothing to generate; drop one")
    if keep_video is not None and first_frame is not None:
        raise BadUsage("--image conditions a generated video; with --keep-video the video is given, drop --image")
    # Stage 1 of a two-stage generation runs at half size: everything size-bound below is checked at it.
    size = (height // 2, width // 2) if two_stage is not None else (height, width)
    if two_stage is not None:
        if keep_video is not None or keep_audio is not None:
            raise BadUsage("--two-stage generates both streams; drop --keep-video / --keep-audio")
        if height % (2 * backbone.vae_spatial) or width % (2 * backbone.vae_spatial):
            raise BadUsage(f"--two-stage: width and height must be multiples of {2 * backbone.vae_spatial} (stage 1 "
                           "runs at half size)")
        if int(two_stage.upsampler.config.in_channels) != int(transformer.config.in_channels):
            raise BadInput(f"the latent upsampler takes {two_stage.upsampler.config.in_channels} channels, the model's "
                           f"latents have {transformer.config.in_channels}")
    stage_grid = backbone.latent_grid(frames, *size)
    kept_video = _prepare_keep_video(keep_video, width, height, frames) if keep_video is not None else None
    kept_audio = (_prepare_keep_audio(keep_audio, round(duration * backbone.audio_sample_rate), backbone)
                  if keep_audio is not None else None)
    if preset is None:
        chosen = PRESETS["plain"]
        guidance = guidance if guidance is not None else Guidance(cfg=cfg, audio_cfg=cfg)
    else:
        chosen = resolve_preset(preset, backbone)
        guidance = guidance if guidance is not None else chosen.guidance
    guidance = _check_guidance(guidance, chosen, transformer, note)
    kind = resolve_schedule(schedule, chosen.schedule)
    if steps is None and kind != "distilled":
        steps = chosen.steps
    sched_config, sched_source = scheduler_config(backbone) if kind == "official" else (None, None)
    # The shift follows the generated stream's token count, as training's `schedule_tokens` does.
    sigmas = sigma_schedule(kind, steps, audio_frames if kept_video is not None else math.prod(stage_grid),
                            sched_config)
    n_steps = len(sigmas) - 1
    settings = {
        "preset": chosen.name,
        "preset_requested": preset,
        "schedule": kind,
        "scheduler_config": sched_source,
        "sigmas": [round(float(x), 6) for x in sigmas],
        "guidance": {**asdict(guidance), "stg_blocks": list(guidance.stg_blocks)},
        "negative_prompt": negative_prompt,
    }

    # Everything that can be refused is checked before any adapter is attached.
    if composite and use_references:
        check_composite(loras)
    layout = video_layout(loras)
    settings["layout"] = layout
    for use in loras:
        if use.stream not in ("video", "audio"):
            raise BadInput(f"{use.lora.path}: avctl.streams {use.lora.avctl.get('streams')!r} names no known stream")
        if not use_references:
            continue
        s = use.lora.downscale
        if use.stream == "video":
            if use.control is None:
                raise BadUsage(f"{use.name}: needs a --control video (or --from-video)")
            if size[0] % (s * backbone.vae_spatial) or size[1] % (s * backbone.vae_spatial):
                need = s * backbone.vae_spatial * (2 if two_stage is not None else 1)
                raise BadUsage(
                    f"{use.name} has reference downscale {s}: width and height must be multiples of {need}"
                    + (" with --two-stage" if two_stage is not None else "")
                )
            have = use.control.shape[0]
            if have < frames:
                t = backbone.vae_temporal
                fits = f"; pass --frames {(have - 1) // t * t + 1} or fewer" if have >= 1 else ""
                raise BadInput(f"{use.name}: its control has {have} frames, the generation needs {frames}{fits}")
            if have > frames:
                note(f"{use.name}: its control has {have} frames; using the first {frames}")
        else:
            if use.control_audio is None:
                raise BadUsage(f"{use.name}: needs an audio --control (a .wav, or a video with sound)")
            wav = np.asarray(use.control_audio)
            if wav.ndim != 2:
                raise BadInput(f"{use.name}: the audio control must be [channels, samples], got {wav.shape}")
            needed = round(duration * backbone.audio_sample_rate)
            seconds = wav.shape[1] / backbone.audio_sample_rate
            if wav.shape[1] < needed:
                raise BadInput(f"{use.name}: its audio control lasts {seconds:.2f} s, the generation {duration:.2f} s; "
                               "give a longer control or fewer --frames")
            if wav.shape[1] > needed + backbone.audio_hop:
                note(f"{use.name}: its audio control lasts {seconds:.2f} s; using the first {duration:.2f} s")
    model_hash = backbone.config_hash()
    for use in loras:
        theirs = use.lora.avctl.get("base_config_hash")
        if theirs and theirs != model_hash:
            made_for = use.lora.avctl.get("base_model") or "another model"
            note(f"{use.name}: trained on {made_for} (config hash {theirs}), this model {backbone.model_id} has "
                 f"{model_hash}; it may not fit")
    for use in loras:  # a LoRA trained with the other stream given (clean) works best used the same way
        other = "video" if use.stream == "audio" else "audio"
        given = kept_video is not None if other == "video" else kept_audio is not None
        if use.lora.avctl.get("context") == "clean" and not given:
            note(f"{use.name} was trained with the {other} given as clean context; pass --keep-{other} to use it as "
                 f"trained (this joint generation makes the {other} too)")
    image = _prepare_image(first_frame, size[1], size[0]) if first_frame is not None else None
    if two_stage is not None:
        from diffusers.pipelines.ltx2.utils import STAGE_2_DISTILLED_SIGMA_VALUES

        stage2_sigmas = torch.tensor([*STAGE_2_DISTILLED_SIGMA_VALUES, 0.0], dtype=torch.float32)
        settings["two_stage"] = {
            "upsampler": str(getattr(two_stage.upsampler.config, "_name_or_path", "") or "given"),
            "stage1_size": [size[1], size[0]],
            "distilled_lora": str(two_stage.distilled_lora.path),
            "distilled_scale": two_stage.distilled_scale,
            "stage2_sigmas": [round(float(x), 6) for x in stage2_sigmas],
            "stage2_noise_scale": float(stage2_sigmas[0]),
            "stage2_guidance": "none (CFG 1, STG 0, modality 1, rescale 0)",
        }
        n_steps += len(stage2_sigmas) - 1
    sample_args = dict(strength=strength, strength_map=strength_map, strength_ramp=strength_ramp, seed=seed,
                       negative_prompt=negative_prompt, use_references=use_references, composite=composite,
                       progress=progress, frames=frames, fps=fps, audio_frames=audio_frames, layout=layout)

    names: list[str] = []
    try:
        # LoRAs: one named adapter each, scaled by @W. Leftovers of an interrupted generation are removed first.
        stale = [n for n in getattr(transformer, "peft_config", {}) if n.startswith(ADAPTER_PREFIX)]
        if stale:
            transformer.delete_adapters(stale)
        for i, use in enumerate(loras):
            name = f"{ADAPTER_PREFIX}{i}"
            load_lora(transformer, use.lora, name)
            names.append(name)
        if names:
            transformer.set_adapters(names, weights=[u.scale for u in loras])
        result = _sample(
            backbone, prompt, loras, grid=stage_grid, height=size[0], width=size[1], sigmas=sigmas,
            guidance=guidance, image=image, kept_video=kept_video, kept_audio=kept_audio,
            decode=two_stage is None, **sample_args,
        )
        if two_stage is not None:
            _, _, first, _, t_prep, _ = result
            name = f"{ADAPTER_PREFIX}distilled"
            load_lora(transformer, two_stage.distilled_lora, name)
            names.append(name)
            transformer.set_adapters(names, weights=[u.scale for u in loras] + [two_stage.distilled_scale])
            init = (upsample_latents(backbone, two_stage.upsampler, first["video"].to(backbone.device)),
                    first["audio"].to(backbone.device))
            image = _prepare_image(first_frame, width, height) if first_frame is not None else None
            result = _sample(
                backbone, prompt, loras, grid=grid, height=height, width=width, sigmas=stage2_sigmas,
                guidance=Guidance(cross_timestep=guidance.cross_timestep), image=image, init=init,
                noise_scale=float(stage2_sigmas[0]), **sample_args,
            )
            result = (*result[:4], t_prep, result[5])
    finally:
        if names:
            transformer.delete_adapters(names)
    video, wav, latents, control, t_prep, t_denoise = result
    if kept_video is not None:
        video = kept_video
    if kept_audio is not None:  # the given track, at the output rate
        from avctl.audio import resample

        wav = resample(kept_audio, backbone.audio_sample_rate, backbone.vocoder_sample_rate)
    n_audio = round(duration * backbone.vocoder_sample_rate)
    wav = wav[:, :n_audio] if wav.shape[1] >= n_audio else np.pad(wav, ((0, 0), (0, n_audio - wav.shape[1])))
    t_end = time.perf_counter()
    return Generation(
        frames=video[:frames],
        audio=wav.astype(np.float32),
        sample_rate=backbone.vocoder_sample_rate,
        fps=fps,
        timings={
            "prepare_s": round(t_prep - t_start, 4),
            "denoise_s": round(t_denoise - t_prep, 4),
            "decode_s": round(t_end - t_denoise, 4),
            "total_s": round(t_end - t_start, 4),
        },
        final_latents=latents,
        schedule=kind,
        steps=n_steps,
        warnings=notes,
        control=control,
        settings=settings,
    )


def _sample(
    backbone: Any,
    prompt: str,
    loras: list[LoraUse],
    *,
    grid: tuple[int, int, int],
    audio_frames: int,
    height: int,
    width: int,
    frames: int,
    fps: float,
    strength: float,
    strength_map: np.ndarray | None,
    strength_ramp: tuple[float, float] | None,
    sigmas: torch.Tensor,
    guidance: Guidance,
    seed: int,
    negative_prompt: str,
    use_references: bool,
    composite: bool,
    image: np.ndarray | None,
    progress: Any,
    kept_video: np.ndarray | None = None,
    kept_audio: np.ndarray | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    noise_scale: float = 1.0,
    decode: bool = True,
    layout: str = "parallel",
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, torch.Tensor], np.ndarray | None, float, float]:
    """The sampler proper, with the adapters attached: references → Euler steps → decode. `init` (normalised video
    and audio latents) starts from noise_scale·noise + (1 − noise_scale)·init instead of pure noise, with the noise
    drawn in packed token shape as `LTX2Pipeline._create_noised_state` draws it; `decode=False` skips the VAEs.
    `layout`: the video references' canvas layout (`video_layout`)."""
    device = backbone.device
    transformer = backbone.transformer
    duration = frames / fps

    def encode(ctrl: np.ndarray) -> torch.Tensor:
        return backbone.encode_video(torch.from_numpy(np.ascontiguousarray(ctrl))[None].to(device))

    def video_strength(lat: torch.Tensor) -> float | torch.Tensor:
        return strength_tokens(tuple(lat.shape[2:]), backbone.vae_temporal, strength, strength_map, strength_ramp)

    # References: each LoRA's control at its own downscale, one group per LoRA — or, composited, one group for all
    # video LoRAs. Audio references are time-aligned with the target.
    video_refs: list[Reference] = []
    audio_refs: list[Reference] = []
    shown: np.ndarray | None = None
    if use_references:
        video_uses = [u for u in loras if u.stream == "video"]
        if composite and video_uses:
            s = video_uses[0].lora.downscale
            merged = composite_controls([resize_control(u.control, (height // s, width // s), frames)
                                         for u in video_uses])
            lat = encode(merged)
            video_refs.append(Reference(lat, s, video_strength(lat), 0))
            shown = merged
        for group, use in enumerate(loras, start=1 if composite else 0):
            s = use.lora.downscale
            if use.stream == "video":
                if composite:
                    continue
                ctrl = resize_control(use.control, (height // s, width // s), frames)
                lat = encode(ctrl)
                video_refs.append(Reference(lat, s, video_strength(lat), group))
                shown = ctrl if shown is None else shown
            else:
                needed = round(duration * backbone.audio_sample_rate)
                wav = torch.from_numpy(np.ascontiguousarray(use.control_audio[:, :needed], dtype=np.float32))
                mel = backbone.waveform_to_mel(wav[None].to(device))
                lat = backbone.encode_audio(mel)[:, :, :audio_frames]
                if lat.shape[2] < audio_frames:
                    raise BadInput(f"{use.name}: the audio control is shorter than the generation")
                w = float(strength) if strength_ramp is None else torch.from_numpy(
                    np.linspace(*strength_ramp, audio_frames, dtype=np.float32)[None] * strength
                )
                audio_refs.append(Reference(lat, 1, w, group))

    text = backbone.encode_text([prompt])
    negative = backbone.encode_text([negative_prompt]) if guidance.uses_cfg else None
    directions = {u.lora.avctl.get("strength_direction", "target") for u in loras}
    direction = "symmetric" if "symmetric" in directions else "target"

    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float32
    c_video = transformer.config.in_channels
    x_video = torch.randn((1, c_video, *grid), generator=gen).to(device, dtype)
    mel_per_token = transformer.config.audio_in_channels // backbone.audio_latent_channels
    x_audio = torch.randn((1, backbone.audio_latent_channels, audio_frames, mel_per_token), generator=gen).to(
        device, dtype
    )
    if init is not None:  # re-noise given latents (two-stage's stage 2): fresh draws, packed shape, video first
        gen = torch.Generator().manual_seed(seed)
        v0, a0 = pack_video(init[0].to(device, dtype)), pack_audio(init[1].to(device, dtype))
        v_noise = torch.randn(v0.shape, generator=gen).to(device, dtype)
        a_noise = torch.randn(a0.shape, generator=gen).to(device, dtype)
        x_video = unpack_video(noise_scale * v_noise + (1 - noise_scale) * v0, grid)
        x_audio = unpack_audio(noise_scale * a_noise + (1 - noise_scale) * a0, backbone.audio_latent_channels)
    # First-frame conditioning: the image's latent is the target's first latent frame (the causal VAE encodes
    # pixel frame 0 alone into it), clean: its tokens carry timestep 0 (`build_stream(clean_frames=1)`, as in
    # training) and are written back after every step, so the sampler never moves them.
    clean_first: torch.Tensor | None = None
    if image is not None:
        clean_first = encode(image).to(device, dtype)  # [1, C, 1, H', W']
        x_video[:, :, :1] = clean_first
    # Given media: the stream's target is its clean latent, at timestep 0, and the sampler never moves it.
    if kept_video is not None:
        x_video = encode(kept_video).to(device, dtype)
    if kept_audio is not None:
        mel = backbone.waveform_to_mel(torch.from_numpy(np.ascontiguousarray(kept_audio))[None].to(device))
        x_audio = backbone.encode_audio(mel)[:, :, :audio_frames].to(device, dtype)
    video_noisy, audio_noisy = kept_video is None, kept_audio is None
    t_prep = time.perf_counter()

    transformer.eval()
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            sigma = torch.full((1,), float(sigmas[i]), device=device)
            canvas = Canvas(
                build_stream("video", transformer, x_video, sigma, video_refs, noisy=video_noisy, fps=fps,
                             layout=layout, clean_frames=1 if clean_first is not None else 0),
                build_stream("audio", transformer, x_audio, sigma, audio_refs, noisy=audio_noisy),
                direction=direction,
            )
            # Each stream's noise level as the model's `sigma` (the pipeline passes σ·1000; clean context 0).
            s_video = sigma * 1000.0 if video_noisy else torch.zeros_like(sigma)
            s_audio = sigma * 1000.0 if audio_noisy else torch.zeros_like(sigma)

            def run(t: Any, canvas: Canvas = canvas, s_video: torch.Tensor = s_video,
                    s_audio: torch.Tensor = s_audio, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
                v, a = predict(transformer, canvas, t.video, t.audio, t.mask, sigma=s_video, audio_sigma=s_audio,
                               cross_timestep=guidance.cross_timestep, **kw)
                return canvas.video.target(v).float(), canvas.audio.target(a).float()

            v_pred, a_pred = run(text)
            if guidance.in_x0:
                passes = [(v_pred, a_pred),
                          run(negative) if guidance.uses_cfg else (None, None),
                          run(text, stg_blocks=list(guidance.stg_blocks)) if guidance.uses_stg else (None, None),
                          run(text, isolate_modalities=True) if guidance.uses_modality else (None, None)]
                s_i = sigmas[i].to(device)
                v_pred = _guide(pack_video(x_video).float(), s_i, *(p[0] for p in passes), guidance.cfg,
                                guidance.stg, guidance.modality, guidance.rescale)
                a_pred = _guide(pack_audio(x_audio).float(), s_i, *(p[1] for p in passes), guidance.audio_cfg,
                                guidance.audio_stg, guidance.audio_modality, guidance.audio_rescale)
            dt = float(sigmas[i + 1] - sigmas[i])
            if video_noisy:
                x_video = unpack_video(pack_video(x_video) + dt * v_pred.float(), grid)
            if audio_noisy:
                x_audio = unpack_audio(pack_audio(x_audio) + dt * a_pred.float(), backbone.audio_latent_channels)
            if clean_first is not None:
                x_video[:, :, :1] = clean_first
            if progress:
                progress(i + 1, len(sigmas) - 1)
    t_denoise = time.perf_counter()

    with torch.no_grad():  # a kept stream is returned as given by the caller, so it is not decoded
        video = backbone.decode_video(x_video)[0].cpu().numpy() if video_noisy and decode else None
        wav_out = (backbone.vocode(backbone.decode_audio(x_audio))[0].float().cpu().numpy()
                   if audio_noisy and decode else None)
    return video, wav_out, {"video": x_video.cpu(), "audio": x_audio.cpu()}, shown, t_prep, t_denoise


def _guide(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
           perturbed: torch.Tensor | None, isolated: torch.Tensor | None, cfg: float, stg: float, modality: float,
           rescale: float) -> torch.Tensor:
    """LTX2Pipeline's guidance for one stream's target tokens [B, T, C]: velocities → x0 (x − σ·v), the delta terms,
    the rescale, and back to a velocity, in the pipeline's order of operations."""
    from diffusers.pipelines.ltx2.pipeline_ltx2 import rescale_noise_cfg

    def x0(v: torch.Tensor) -> torch.Tensor:
        return x - v * sigma

    x0_cond = x0(cond)
    cfg_delta = (cfg - 1) * (x0_cond - x0(uncond)) if uncond is not None else 0
    stg_delta = stg * (x0_cond - x0(perturbed)) if perturbed is not None else 0
    modality_delta = (modality - 1) * (x0_cond - x0(isolated)) if isolated is not None else 0
    guided = x0_cond + cfg_delta + stg_delta + modality_delta
    if rescale > 0:
        guided = rescale_noise_cfg(guided, x0_cond, guidance_rescale=rescale)
    return (x - guided) / sigma


def _check_guidance(guidance: Guidance, preset: Preset, transformer: Any, note: Callable[[str], None]) -> Guidance:
    """Validate the STG blocks against the model and resolve what the model decides: a preset's own STG blocks move
    to the same relative depth of a smaller model; STG on a model without `perturbed_attn` does nothing in LTX-2
    (the pipeline's pass equals the plain one), so it is dropped with a note; cross_timestep None → the model's."""
    layers = int(transformer.config.num_layers)
    blocks = tuple(int(b) for b in guidance.stg_blocks)
    if any(b < 0 or b >= layers for b in blocks):
        if blocks != preset.guidance.stg_blocks:
            raise BadUsage(f"--stg-blocks {','.join(map(str, blocks))}: this model has blocks 0-{layers - 1}")
        scaled = scale_stg_blocks(blocks, layers)
        if guidance.stg or guidance.audio_stg:
            note(f"preset {preset.name}: STG block {','.join(map(str, blocks))} of LTX-2's {LTX2_BLOCKS} is block "
                 f"{','.join(map(str, scaled))} of this model's {layers} (same relative depth); pass --stg-blocks "
                 "to choose")
        blocks = scaled
    guidance = replace(guidance, stg_blocks=blocks)
    if (guidance.stg or guidance.audio_stg) and not blocks:
        raise BadUsage("STG needs --stg-blocks (the blocks whose self-attention its extra pass skips)")
    if guidance.uses_stg and not getattr(transformer.config, "perturbed_attn", False):
        note("this model's transformer config has perturbed_attn false, so STG has no effect in LTX-2; its pass is "
             "skipped (set perturbed_attn: true in transformer/config.json to use STG; no weights change)")
        guidance = replace(guidance, stg=0.0, audio_stg=0.0)
    if guidance.cross_timestep is None:
        guidance = replace(guidance, cross_timestep=bool(getattr(transformer.config, "cross_attn_mod", False)))
    return guidance


def pipeline_latents(backbone: Any, latents: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """avctl's normalised final latents → what `LTX2Pipeline(output_type="latent")` returns: video [B, C, F, H, W]
    and audio [B, C, T, M], unpacked and denormalised (with the pipeline's own helpers)."""
    from diffusers import LTX2Pipeline

    vae, audio_vae = backbone.vae, backbone.audio_vae
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if "video" in latents:
            out["video"] = LTX2Pipeline._denormalize_latents(
                latents["video"].float().cpu(), vae.latents_mean.cpu(), vae.latents_std.cpu(), vae.config.scaling_factor
            ).contiguous()
        if "audio" in latents:
            lat = latents["audio"].float().cpu()
            tokens = LTX2Pipeline._denormalize_audio_latents(
                LTX2Pipeline._pack_audio_latents(lat), audio_vae.latents_mean.cpu(), audio_vae.latents_std.cpu()
            )
            out["audio"] = LTX2Pipeline._unpack_audio_latents(tokens, lat.shape[2], num_mel_bins=lat.shape[3])
            out["audio"] = out["audio"].contiguous()
    return out


# ------------------------------------------------------------------------------------------------ previews
def preview_paths(out: Path) -> tuple[Path, Path]:
    """`<out>.preview.mp4` and `<out>.sheet.png` next to an output `<out>.mp4`."""
    out = Path(out)
    return out.with_suffix(".preview.mp4"), out.with_suffix(".sheet.png")


def side_by_side(control: np.ndarray, output: np.ndarray) -> np.ndarray:
    """[F, H, W_c + W, 3]: the control resized to the output's height (aspect kept, even width) | the output."""
    f, h = output.shape[0], output.shape[1]
    ch, cw = control.shape[1:3]
    new_w = max(2, round(cw * h / ch / 2) * 2)
    ctrl = control[:f]
    if len(ctrl) < f:  # a shorter control (never the case for what generate() fed) holds its last frame
        ctrl = np.concatenate([ctrl, np.repeat(ctrl[-1:], f - len(ctrl), axis=0)])
    interp = cv2.INTER_AREA if new_w < cw else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(c, (new_w, h), interpolation=interp) for c in ctrl])
    return np.concatenate([resized, output], axis=2)


def write_preview(out: Path, result: Generation, caption: str = "") -> tuple[Path, Path]:
    """Write `<out>.preview.mp4` (control | output, with the generated audio) and `<out>.sheet.png` (a contact
    sheet: control row, output row). Needs the generation's video control."""
    from avctl import media
    from avctl.metrics import contact_sheet

    if result.control is None:
        raise BadUsage("--preview needs a video control (an audio-only or control-free generation has none)")
    preview, sheet = preview_paths(out)
    both = side_by_side(result.control, result.frames)
    media.write_video(preview, both, result.fps, audio=result.audio, sample_rate=result.sample_rate)
    contact_sheet(sheet, [("control", result.control), ("output", result.frames)], caption=caption)
    return preview, sheet
