"""The parallel canvas: THE method, in one place.

A control LoRA sees its control as extra tokens on the same sequence as the noisy target:

    tokens    = [ target tokens | reference group 0 | reference group 1 | ... ]      per stream (video, audio)
    timestep  = [ σ·1000 ...    | 0 ...             | 0 ...             | ... ]      clean reference, noisy target
    loss mask = [ 1 ...         | 0 ...             | 0 ...             | ... ]      loss on target tokens only
    coords    = explicit RoPE positions for every token (below)

Positions (the small-to-large grid). A video reference encoded at (H/s, W/s) gets its coordinates built on its
own latent grid and its spatial axes (y, x) multiplied by s, so reference token (i, j) spans target pixels
[32·s·i, 32·s·(i+1)) and its RoPE midpoint is the centre of the s×s block of target tokens it stands for. Time is
unchanged. With layout "side-by-side" (IC-LoRA's spatial concatenation, the paper's ablation baseline) the reference
instead sits to the right of the target in one wide frame: its x positions are offset by the target width. The
token order does not matter to the model (every op but attention is per token and attention sees positions through
RoPE only), so both layouts share the same sequence order and the same strength machinery.

Audio references are time-aligned with the target: both start at t = 0 s (ltx-trainer's "flexible" convention,
written into LoRA metadata as `audio_ref_time = "aligned"`), so reference audio token k sits at the same time as
target audio token k.

σ shift. The noise schedule's shift depends on the TARGET token count only (`shift_mu`), in training and sampling
alike; counting the reference tokens too (as diffusers' in-context pipeline does) makes a control change the
schedule.

The stream a LoRA does not control is handled by the modality's `context`: "noised" (its own noisy tokens at the
same σ, generated jointly, no loss), "clean" (real media at t = 0, no loss) or "absent" (no tokens at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

Stream = Literal["video", "audio"]
AUDIO_REF_TIME = "aligned"


# ---------------------------------------------------------------------------------------------------------- packing
def pack_video(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] → [B, F·H·W, C], token order (f, h, w) row-major as in diffusers' LTX-2 pipelines."""
    b, c = latents.shape[:2]
    return latents.reshape(b, c, -1).transpose(1, 2)


def unpack_video(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """[B, F·H·W, C] → [B, C, F, H, W]."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *grid)


def pack_audio(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, T, M] → [B, T, C·M]; feature index c·M + m, as diffusers' LTX-2 pipelines pack audio."""
    return latents.transpose(1, 2).flatten(2, 3)


def unpack_audio(tokens: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, T, C·M] → [B, C, T, M]."""
    b, t, cm = tokens.shape
    return tokens.reshape(b, t, channels, cm // channels).transpose(1, 2)


# -------------------------------------------------------------------------------------------------- noise schedule
def shift_mu(target_tokens: int) -> float:
    """Location of the σ shift for a canvas with `target_tokens` noisy tokens: linear in the token count, 0.95 at
    1024 and 2.05 at 4096 (LTX-2's rule), extrapolated outside. Reference tokens are never counted."""
    return 0.95 + 1.1 * (target_tokens - 1024) / 3072


def shift_sigmas(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """Exponential time shift: σ' = e^μ / (e^μ + 1/σ − 1). Keeps 0 and 1 fixed."""
    e = math.exp(mu)
    safe = sigmas.clamp(min=1e-12)
    return torch.where(sigmas > 0, e / (e + 1 / safe - 1), torch.zeros_like(sigmas))


# -------------------------------------------------------------------------------------------------- coordinates
def video_coords(
    transformer: torch.nn.Module,
    batch: int,
    grid: tuple[int, int, int],
    fps: float,
    device: torch.device,
    downscale: int = 1,
    x_offset_px: float = 0.0,
) -> torch.Tensor:
    """RoPE patch bounds [B, 3, F·H·W, 2] for a latent grid (time in s, y/x in pixels), via diffusers' own
    `prepare_video_coords`. `downscale` stretches y/x so a reference token centres on its s×s target block."""
    f, h, w = grid
    coords = transformer.rope.prepare_video_coords(batch, f, h, w, device, fps=fps)
    if downscale != 1:
        coords = coords.clone()
        coords[:, 1:] = coords[:, 1:] * downscale
    if x_offset_px:
        coords = coords.clone()
        coords[:, 2] = coords[:, 2] + x_offset_px
    return coords


def audio_coords(transformer: torch.nn.Module, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
    """RoPE bounds [B, 1, T, 2] in seconds (0.04 s per latent token), via diffusers' `prepare_audio_coords`."""
    return transformer.audio_rope.prepare_audio_coords(batch, tokens, device)


# -------------------------------------------------------------------------------------------------- the canvas
@dataclass
class Reference:
    """One reference (control) on one stream: normalised VAE latents, already at the reference size."""

    latents: torch.Tensor  # video [B, C, F, h, w] (h = H/s, w = W/s) | audio [B, C, T, M]
    downscale: int = 1
    # Attention strength from target queries to these tokens: a float in [0, 1] or a per-token map [B, T_ref].
    strength: float | torch.Tensor = 1.0
    group: int = 0  # references of different groups do not attend to each other (several LoRAs, one canvas)


@dataclass
class Segment:
    """A contiguous run of tokens on a stream's sequence: the target, or one reference."""

    start: int
    end: int
    group: int | None  # None = target
    strength: float | torch.Tensor = 1.0  # only meaningful for references


@dataclass
class StreamCanvas:
    """One stream's share of the canvas, ready for the transformer."""

    tokens: torch.Tensor  # [B, T, C] target then references
    coords: torch.Tensor  # [B, A, T, 2] (A = 3 for video, 1 for audio)
    timestep: torch.Tensor  # [B, T] σ·1000 on noisy target tokens, 0 on references and clean context
    loss_mask: torch.Tensor  # [B, T] bool: True where the loss counts
    segments: list[Segment] = field(default_factory=list)
    grid: tuple[int, ...] = ()  # target latent grid: (F, H, W) video or (T,) audio
    # [B] the sample's σ·1000 (0 when the target is clean context): the model's `sigma` / `audio_sigma`, which
    # LTX-2.3-style configs use for the prompt modulation. Per sample, so reference tokens at timestep 0 and
    # clean first-frame tokens do not change it.
    sigma: torch.Tensor | None = None

    @property
    def target_len(self) -> int:
        return self.segments[0].end

    def target(self, tokens: torch.Tensor) -> torch.Tensor:
        """The target part of a [B, T, C] sequence on this canvas (e.g. the model's prediction)."""
        return tokens[:, : self.target_len]


@dataclass
class Canvas:
    video: StreamCanvas | None
    audio: StreamCanvas | None
    direction: Literal["target", "symmetric"] = "target"

    def stream(self, name: Stream) -> StreamCanvas | None:
        return self.video if name == "video" else self.audio


def _per_token_timestep(sigma: torch.Tensor, n: int, noisy: bool) -> torch.Tensor:
    """[B] σ → [B, n] timesteps: σ·1000 when the tokens are noisy, 0 when they are clean."""
    t = sigma[:, None].expand(-1, n) * 1000.0 if noisy else torch.zeros(sigma.shape[0], n, device=sigma.device)
    return t.to(torch.float32)


LAYOUTS = ("parallel", "side-by-side")  # where a video reference sits: on the target's positions, or to its right


def build_stream(
    stream: Stream,
    transformer: torch.nn.Module,
    target_latents: torch.Tensor,
    sigma: torch.Tensor,
    references: list[Reference] = (),
    *,
    noisy: bool = True,
    with_loss: bool = True,
    fps: float = 24.0,
    layout: Literal["parallel", "side-by-side"] = "parallel",
    clean_frames: int = 0,
) -> StreamCanvas:
    """Put one stream's target (already noised to `sigma` when `noisy`) and its references on the canvas.

    target_latents: video [B, C, F, H, W] or audio [B, C, T, M], normalised. sigma: [B].
    `noisy=False` makes the target clean context (timestep 0); `with_loss=False` keeps it out of the loss.
    `clean_frames` (video): the target's first latent frames are given (first-frame image conditioning): their
    tokens, the first clean_frames·H·W in (f, h, w) order, get timestep 0 and no loss; the caller puts their clean
    latents in `target_latents`. Training and sampling both condition through this, so the layouts match.
    """
    b, device = target_latents.shape[0], target_latents.device
    if stream == "video":
        grid = tuple(target_latents.shape[2:])
        tokens = [pack_video(target_latents)]
        coords = [video_coords(transformer, b, grid, fps, device)]
    else:
        grid = (target_latents.shape[2],)
        tokens = [pack_audio(target_latents)]
        coords = [audio_coords(transformer, b, grid[0], device)]
    n_target = tokens[0].shape[1]
    timesteps = [_per_token_timestep(sigma, n_target, noisy)]
    masks = [torch.full((b, n_target), with_loss, dtype=torch.bool, device=device)]
    if clean_frames:
        if stream != "video" or not 0 < clean_frames <= grid[0]:
            raise ValueError(f"clean_frames {clean_frames}: only a video target's first latent frames can be given")
        n_clean = clean_frames * grid[1] * grid[2]
        timesteps[0][:, :n_clean] = 0.0
        masks[0][:, :n_clean] = False
    segments = [Segment(0, n_target, None)]

    start = n_target
    for ref in references:
        lat = ref.latents.to(target_latents.dtype)
        if stream == "video":
            f, h, w = lat.shape[2:]
            s = ref.downscale
            if f != grid[0] or h * s != grid[1] or w * s != grid[2]:
                raise ValueError(
                    f"video reference latent grid {(f, h, w)} × {s} does not match the target grid {grid}"
                )
            ref_tokens = pack_video(lat)
            x_offset = 0.0
            if layout == "side-by-side":
                if s != 1:
                    raise ValueError("the side-by-side layout needs a full-size reference (downscale 1)")
                # The target's pixel width: the last target token's x end bound.
                x_offset = float(coords[0][0, 2, :, 1].max())
            ref_coords = video_coords(transformer, b, (f, h, w), fps, device, downscale=s, x_offset_px=x_offset)
        else:
            if lat.shape[2] != grid[0]:
                raise ValueError(f"audio reference has {lat.shape[2]} latent frames, the target {grid[0]}")
            ref_tokens = pack_audio(lat)
            ref_coords = audio_coords(transformer, b, lat.shape[2], device)  # time-aligned: both start at 0 s
        n = ref_tokens.shape[1]
        strength = ref.strength
        if isinstance(strength, torch.Tensor):
            strength = strength.to(device=device, dtype=torch.float32)
            if strength.shape != (b, n):
                raise ValueError(f"a per-token strength map must be [B, T_ref] = {(b, n)}, got {tuple(strength.shape)}")
            if strength.min() < 0 or strength.max() > 1:
                raise ValueError("strength must lie in [0, 1] (above 1 copies the reference)")
        elif not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength {strength} is outside [0, 1] (above 1 copies the reference)")
        tokens.append(ref_tokens)
        coords.append(ref_coords)
        timesteps.append(torch.zeros(b, n, device=device))
        masks.append(torch.zeros(b, n, dtype=torch.bool, device=device))
        segments.append(Segment(start, start + n, ref.group, strength))
        start += n

    return StreamCanvas(
        tokens=torch.cat(tokens, dim=1),
        coords=torch.cat(coords, dim=2),
        timestep=torch.cat(timesteps, dim=1),
        loss_mask=torch.cat(masks, dim=1),
        segments=segments,
        grid=grid,
        sigma=(sigma.to(torch.float32) * 1000.0 if noisy else torch.zeros(b, device=device)),
    )


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample loss [B]: MSE over (tokens, channels) where `mask` [B, T] is True, divided by the mask mean
    (the fraction of tokens that count), as ltx-trainer does."""
    m = mask.to(pred.dtype)[..., None]
    per_token = ((pred.float() - target.float()) ** 2) * m
    return per_token.mean(dim=(1, 2)) / m.mean(dim=(1, 2)).clamp(min=1e-8)
