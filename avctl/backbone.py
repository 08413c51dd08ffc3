"""LTX-2 components from diffusers: load them (a diffusers-format directory, a cached hub id, or the built-in `tiny`
preset), and turn media into the tensors the transformer reads and back.

Everything here calls diffusers' own classes and the LTX-2 pipeline's static helpers (`LTX2Pipeline._normalize_latents`,
`_pack_audio_latents`, `_normalize_audio_latents`, ...), so the math is the pipeline's. Conventions:

    video frames   [B, F, H, W, 3] uint8            F ≡ 1 (mod vae_temporal), H, W multiples of vae_spatial
    video latents  [B, C, F', H', W']  NORMALISED   (z − mean)·scaling_factor / std, per channel (the VAE's mean)
    waveform       [B, 2, N] float32 at audio_sample_rate (mel front end) or vocoder_sample_rate (vocoder output)
    mel            [B, 2, T, mel_bins] float32, natural-log magnitude mel
    audio latents  [B, C, T', M']  NORMALISED on the packed tokens [B, T', C·M'], so feature c·M' + m lines up

Latents come back in the backbone's dtype; media tensors (frames, mel, waveform) in uint8 / float32.

The `tiny` preset is a seeded random-init set of the same classes, small enough for CPU tests. Its audio VAE has
`base_channels = latent_channels · mel_bins / 4` (2 · 16 = 32) because the audio VAE's `latents_mean/std` buffers have
`base_channels` entries and the pipeline normalises packed tokens of width `latent_channels · mel_bins / 4` with them
(production LTX-2 satisfies the same identity: 128 = 8 · 16).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avctl.env import HF_HOME, HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, MODEL
from avctl.errors import BadInput, BadUsage, MissingWeights
from avctl.io import atomic_folder
from avctl.presets import TINY_MAX_LENGTH, component_classes, tiny_tokenizer

if TYPE_CHECKING:
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
    from transformers import Gemma3ForConditionalGeneration, PreTrainedTokenizerBase

# The diffusers-format LTX-2 repo named in diffusers' LTX2Pipeline docstring.
DEFAULT_MODEL_ID = "Lightricks/LTX-2"
TINY = "tiny"
POCKET = "pocket"
# The pocket preset's pretrained weights ship inside the package (examples/pocket_pretrain.py makes them).
POCKET_DIR = Path(__file__).resolve().parent / "weights" / "pocket"
COMPONENTS = ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder", "tokenizer")

# LTX-2's mel front end (ltx2.md §5.2). The FFT size and log floor are stored in no config; rate, hop and bin count
# are read from the audio VAE's config.
MEL_N_FFT = 1024
MEL_LOG_FLOOR = 1e-5

# Keys in saved configs that say who wrote the file, not what the model is; left out of config_hash.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "dtype", "torch_dtype", "name_or_path", "architectures", "local_files_only", "is_local"}
)

# tokenizer_config.json entries besides the special tokens that change the token ids.
_TOKENIZER_KEYS = frozenset(
    {"add_bos_token", "add_eos_token", "added_tokens_decoder", "do_lower_case", "model_max_length", "padding_side"}
)


@dataclass
class TextEmbeddings:
    video: torch.Tensor  # [B, L, C] encoder_hidden_states for the transformer
    audio: torch.Tensor  # [B, L, C] audio_encoder_hidden_states
    mask: torch.Tensor  # [B, L] 0/1 encoder_attention_mask (also used as audio_encoder_attention_mask)


@dataclass(frozen=True)
class VaeTiling:
    """How encode_video and decode_video split a video for the VAE: spatial tiles of `tile_px` square stepping
    `stride_px`, temporal windows of `tile_frames` (+1) frames stepping `stride_frames`, blended where they overlap.
    Sizes are rounded down to the VAE's grid (32 px / 8 frames on LTX-2); a video no larger than a tile takes one
    untiled pass, and `enabled=False` is the untiled VAE exactly.

    Defaults, for the real VAE at 768x512x121: 512-px tiles with a 64-px overlap are diffusers' own; they cut that
    frame into a 512x512 and a 320x512 tile (the rows need no split). 32-frame windows (33 frames, 5 latent frames)
    stepping 24 (an 8-frame cross-fade; 5 windows over 121 frames) hold 33 of the clip's 121 frames, so a tile's
    activations are about 18% of the untiled decode's, while each latent frame is decoded about 5/3 times (16/8 would
    decode each three times)."""

    enabled: bool = True
    tile_px: int = 512
    stride_px: int = 448
    tile_frames: int = 32
    stride_frames: int = 24

    def __post_init__(self) -> None:
        for name in ("tile_px", "stride_px", "tile_frames", "stride_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadUsage(f"VAE tiling {name} must be a positive integer, got {value!r}")
        if self.stride_px > self.tile_px or self.stride_frames > self.tile_frames:
            raise BadUsage(
                f"VAE tiling strides ({self.stride_px} px, {self.stride_frames} frames) must not exceed the tiles "
                f"({self.tile_px} px, {self.tile_frames} frames)"
            )


@dataclass
class Backbone:
    """The LTX-2 components avctl uses. Parts not asked for at load time are None; methods that need them raise
    BadUsage naming the part."""

    model_id: str
    transformer: LTX2VideoTransformer3DModel | None
    vae: AutoencoderKLLTX2Video | None
    audio_vae: AutoencoderKLLTX2Audio | None
    vocoder: LTX2Vocoder | None
    connectors: LTX2TextConnectors | None
    text_encoder: Gemma3ForConditionalGeneration | None
    tokenizer: PreTrainedTokenizerBase | None
    device: torch.device
    dtype: torch.dtype
    # Canonical config of every component the source has (loaded or not), so the hash does not depend on `components`.
    configs: dict[str, Any] = field(default_factory=dict, repr=False)
    vae_tiling: VaeTiling = field(default_factory=VaeTiling)
    # Set when the text encoder runs in 8 bits (--text-encoder-8bit): its embeddings differ, so the cache keys on it.
    text_encoder_8bit: bool = False

    # ---- sizes, read from the loaded configs (the transformer's config stands in where it records the same value)

    @property
    def vae_spatial(self) -> int:
        if self.vae is not None:
            return int(self.vae.spatial_compression_ratio)
        return int(self._need("transformer", "vae_spatial").config.vae_scale_factors[1])

    @property
    def vae_temporal(self) -> int:
        if self.vae is not None:
            return int(self.vae.temporal_compression_ratio)
        return int(self._need("transformer", "vae_temporal").config.vae_scale_factors[0])

    @property
    def audio_sample_rate(self) -> int:
        if self.audio_vae is not None:
            return int(self.audio_vae.config.sample_rate)
        return int(self._need("transformer", "audio_sample_rate").config.audio_sampling_rate)

    @property
    def audio_hop(self) -> int:
        if self.audio_vae is not None:
            return int(self.audio_vae.config.mel_hop_length)
        return int(self._need("transformer", "audio_hop").config.audio_hop_length)

    @property
    def mel_bins(self) -> int:
        if self.audio_vae is not None:
            return int(self.audio_vae.config.mel_bins)
        vocoder = self._need("vocoder", "mel_bins")
        return int(vocoder.config.in_channels // vocoder.config.out_channels)  # the vocoder reads channels × mel bins

    @property
    def audio_latent_channels(self) -> int:
        return int(self._need("audio_vae", "audio_latent_channels").config.latent_channels)

    @property
    def audio_temporal(self) -> int:
        if self.audio_vae is not None:
            return int(self.audio_vae.temporal_compression_ratio)
        return int(self._need("transformer", "audio_temporal").config.audio_scale_factor)

    @property
    def vocoder_sample_rate(self) -> int:
        return int(self._need("vocoder", "vocoder_sample_rate").config.output_sampling_rate)

    # ---- identity and geometry

    def config_hash(self) -> str:
        """sha256 over the canonical component configs (not the weights), first 16 hex characters."""
        text = json.dumps(self.configs, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def latent_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(F', H', W') of the video latent for F frames of H×W pixels; BadUsage when the VAE cannot take that size."""
        t, s = self.vae_temporal, self.vae_spatial
        if frames < 1 or (frames - 1) % t:
            below = max(1, (frames - 1) // t * t + 1)
            raise BadUsage(f"{frames} frames: LTX-2 needs 1 + a multiple of {t} frames (e.g. {below} or {below + t})")
        if height < s or width < s or height % s or width % s:
            raise BadUsage(f"{width}x{height}: width and height must be positive multiples of {s}")
        return (frames - 1) // t + 1, height // s, width // s

    def audio_latent_frames(self, duration_s: float) -> int:
        """Audio latent frames that encode_audio(waveform_to_mel(wav)) gives for round(duration_s · rate) samples."""
        if not duration_s > 0:
            raise BadUsage(f"audio duration {duration_s} s must be positive")
        samples = round(duration_s * self.audio_sample_rate)
        mel_frames = samples // self.audio_hop + 1  # centred STFT
        return -(-mel_frames // self.audio_temporal)  # the encoder's causal stride-2 convs round up

    # ---- text

    def encode_text(self, prompts: list[str]) -> TextEmbeddings:
        """Gemma hidden states of every layer → LTX2TextConnectors, as LTX2Pipeline does it."""
        from diffusers import LTX2Pipeline

        tokenizer = self._need("tokenizer", "encode_text")
        text_encoder = self._need("text_encoder", "encode_text")
        connectors = self._need("connectors", "encode_text")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise BadUsage("encode_text needs at least one prompt")
        # The pipeline pads to its max_sequence_length; a tokenizer with a smaller limit (the tiny one) sets it.
        pipeline_length = inspect.signature(LTX2Pipeline.__call__).parameters["max_sequence_length"].default
        max_length = min(int(tokenizer.model_max_length), int(pipeline_length))
        tokenizer.padding_side = "left"  # Gemma is used with left padding (LTX2Pipeline._get_gemma_prompt_embeds)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokens = tokenizer(
            [p.strip() for p in prompts],
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)  # [B, L]
        mask = tokens.attention_mask.to(self.device)  # [B, L]
        with torch.no_grad():
            out = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            layers = torch.stack(out.hidden_states, dim=-1)  # [B, L, D, layers + 1]
            packed = layers.flatten(2, 3).to(self.dtype)  # [B, L, D·(layers + 1)]
            video, audio, connector_mask = connectors(packed, mask, padding_side=tokenizer.padding_side)
        return TextEmbeddings(video=video, audio=audio, mask=connector_mask)

    # ---- video

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, F, H, W, 3] → normalised latents [B, C, F', H', W'] (the posterior mean: deterministic)."""
        from diffusers import LTX2Pipeline

        vae = self._need("vae", "encode_video")
        if (
            not isinstance(frames, torch.Tensor)
            or frames.dtype != torch.uint8
            or frames.ndim != 5
            or frames.shape[-1] != 3
        ):
            got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise BadInput(f"encode_video takes uint8 RGB frames [B, F, H, W, 3], got {got}")
        _, num_frames, height, width, _ = frames.shape
        self.latent_grid(num_frames, height, width)
        pixels = frames.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [B, 3, F, H, W] in [-1, 1]
        with torch.no_grad():
            self._configure_vae(vae, num_frames, height // self.vae_spatial, width // self.vae_spatial, encode=True)
            latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()  # [B, C, F', H', W']
            latents = LTX2Pipeline._normalize_latents(
                latents.float(), vae.latents_mean, vae.latents_std, vae.config.scaling_factor
            )
        return latents.to(self.dtype)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F', H', W'] → uint8 frames [B, F, H, W, 3]."""
        from diffusers import LTX2Pipeline

        vae = self._need("vae", "decode_video")
        if latents.ndim != 5 or latents.shape[1] != vae.config.latent_channels:
            raise BadInput(
                f"decode_video takes latents [B, {vae.config.latent_channels}, F', H', W'], got {tuple(latents.shape)}"
            )
        if vae.config.decoder_spatial_padding_mode == "reflect" and min(latents.shape[3:]) < 2:
            # Reflect padding needs two latent rows and columns.
            raise BadUsage(
                f"decode_video needs a latent grid at least 2x2 ({2 * self.vae_spatial} px), got {tuple(latents.shape)}"
            )
        with torch.no_grad():
            z = LTX2Pipeline._denormalize_latents(
                latents.to(self.device, torch.float32), vae.latents_mean, vae.latents_std, vae.config.scaling_factor
            )
            # The pipeline's default decode_timestep is 0 (and then no decode noise is mixed in).
            timestep = torch.zeros(z.shape[0], device=self.device) if vae.config.timestep_conditioning else None
            video = self._decode_windows(vae, z.to(vae.dtype), timestep)  # [B, 3, F, H, W] in [-1, 1]
        # In place: at LTX-2 sizes a float copy of the clip is hundreds of MB.
        frames = video.float().clamp_(-1.0, 1.0).add_(1.0).mul_(127.5).round_().to(torch.uint8)
        return frames.permute(0, 2, 3, 4, 1).contiguous()  # [B, F, H, W, 3]

    def set_vae_tiling(self, tiling: VaeTiling | bool = True) -> Backbone:
        """Tile (True, or a VaeTiling with its sizes) or not (False: the untiled VAE) every later encode_video and
        decode_video; returns self."""
        if isinstance(tiling, bool):
            tiling = VaeTiling(enabled=tiling)
        if not isinstance(tiling, VaeTiling):
            raise BadUsage(f"vae_tiling takes True, False or a VaeTiling, got {type(tiling).__name__}")
        self.vae_tiling = tiling
        return self

    def _vae_tile_cells(self) -> tuple[int, int, int, int]:
        """(tile, stride) in latent cells and (tile, stride) in latent frames: the tiling rounded down to the VAE's
        grid, at least one cell, strides no larger than tiles."""
        t, s = self.vae_temporal, self.vae_spatial
        tiling = self.vae_tiling
        tile, tile_t = max(1, tiling.tile_px // s), max(1, tiling.tile_frames // t)
        return tile, min(tile, max(1, tiling.stride_px // s)), tile_t, min(tile_t, max(1, tiling.stride_frames // t))

    def _configure_vae(self, vae: AutoencoderKLLTX2Video, frames: int, height: int, width: int, encode: bool) -> None:
        """Set diffusers' tiling attributes for one call on `frames` pixel frames (encode) of height × width latent
        cells. diffusers cuts the spatial tiles, and the temporal windows when encoding (decode_video steps those
        itself, see _decode_windows)."""
        enabled = self.vae_tiling.enabled
        tile, stride, tile_t, stride_t = self._vae_tile_cells()
        s, t = self.vae_spatial, self.vae_temporal
        padding = vae.config.encoder_spatial_padding_mode if encode else vae.config.decoder_spatial_padding_mode
        vae.use_tiling = enabled
        vae.use_slicing = enabled and encode  # one clip at a time (diffusers' decode slicing drops a decode timestep)
        # diffusers' _encode reads use_framewise_decoding to cut temporal windows of tile + 1 frames; a clip of one
        # window is encoded whole.
        vae.use_framewise_encoding = vae.use_framewise_decoding = enabled and encode and frames > tile_t * t + 1
        vae.tile_sample_min_height = vae.tile_sample_min_width = tile * s
        vae.tile_sample_stride_height = _axis_stride(height, tile, stride, padding == "reflect") * s
        vae.tile_sample_stride_width = _axis_stride(width, tile, stride, padding == "reflect") * s
        vae.tile_sample_min_num_frames = tile_t * t
        vae.tile_sample_stride_num_frames = stride_t * t

    def _decode_windows(
        self, vae: AutoencoderKLLTX2Video, z: torch.Tensor, timestep: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw latents [B, C, F', H', W'] → [B, 3, F, H, W]: overlapping windows of tile + 1 latent frames, each decoded
        by diffusers (spatially tiled there) and cross-faded. avctl steps the windows itself because diffusers 0.42's
        framewise decoding keeps its first window one frame longer than the rest and so shows every later frame one
        frame late. A window's first frame decodes its first latent frame as a lone first frame; it gets weight 0."""
        _, _, latent_frames, height, width = z.shape
        self._configure_vae(vae, 0, height, width, encode=False)
        _, _, tile_t, stride_t = self._vae_tile_cells()
        window = tile_t + 1
        if not self.vae_tiling.enabled or latent_frames <= window:
            return vae.decode(z, timestep, return_dict=False)[0]
        t = self.vae_temporal
        starts = [*range(0, latent_frames - window, stride_t), latent_frames - window]
        total: torch.Tensor | None = None  # Σ weight · frames, [B, 3, F, H, W] float32
        weight = torch.zeros((latent_frames - 1) * t + 1, device=z.device)
        for k, start in enumerate(starts):
            piece = vae.decode(z[:, :, start : start + window], timestep, return_dict=False)[0].float()
            ramp = torch.ones(piece.shape[2], device=z.device)  # pixel frames start·t … (start + tile_t)·t
            if k > 0:  # fade in over the overlap with the window before
                n = (starts[k - 1] + tile_t - start) * t + 1
                ramp[:n] = torch.arange(n, device=z.device) / n
            if k + 1 < len(starts):  # fade out over the overlap with the next
                n = (start + tile_t - starts[k + 1]) * t + 1
                ramp[-n:] = torch.minimum(ramp[-n:], 1 - torch.arange(n, device=z.device) / n)
            if total is None:
                total = piece.new_zeros((*piece.shape[:2], weight.numel(), *piece.shape[3:]))
            frames = slice(start * t, start * t + piece.shape[2])
            total[:, :, frames].addcmul_(piece, ramp[:, None, None])
            weight[frames] += ramp
        return total.div_(weight[:, None, None])

    # ---- audio

    def waveform_to_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, C, N] float at audio_sample_rate → log-mel [B, C, T, mel_bins], T = N // hop + 1. Mono is duplicated
        to the audio VAE's channel count."""
        import torchaudio

        if not isinstance(wav, torch.Tensor) or wav.ndim != 3:
            got = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
            raise BadInput(f"waveform_to_mel takes a waveform [B, channels, samples], got {got}")
        channels = int(self.audio_vae.config.in_channels) if self.audio_vae is not None else 2
        if wav.shape[1] == 1 and channels > 1:
            wav = wav.expand(-1, channels, -1)
        if wav.shape[1] != channels:
            raise BadInput(f"waveform_to_mel needs {channels}-channel audio, got {wav.shape[1]} channels")
        if wav.shape[2] <= MEL_N_FFT // 2:
            raise BadInput(
                f"audio of {wav.shape[2]} samples is too short for the mel front end (needs > {MEL_N_FFT // 2})"
            )
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.audio_sample_rate,
            n_fft=MEL_N_FFT,
            hop_length=self.audio_hop,
            n_mels=self.mel_bins,
            power=1.0,
            mel_scale="slaney",
            norm="slaney",
        ).to(self.device)
        with torch.no_grad():
            mel = transform(wav.to(self.device, torch.float32))  # [B, C, mel_bins, T]
            mel = torch.log(mel.clamp(min=MEL_LOG_FLOOR))
        return mel.transpose(2, 3).contiguous()  # [B, C, T, mel_bins]

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, C, T, mel_bins] → normalised audio latents [B, C', T', M'] (posterior mean), T' = ⌈T / 4⌉."""
        from diffusers import LTX2Pipeline

        audio_vae = self._need("audio_vae", "encode_audio")
        self._check_mel(mel, "encode_audio")
        with torch.no_grad():
            latents = audio_vae.encode(mel.to(self.device, audio_vae.dtype)).latent_dist.mode()  # [B, C', T', M']
            _, _, latent_frames, latent_mel = latents.shape
            tokens = LTX2Pipeline._pack_audio_latents(latents.float())  # [B, T', C'·M']
            tokens = LTX2Pipeline._normalize_audio_latents(tokens, audio_vae.latents_mean, audio_vae.latents_std)
            latents = LTX2Pipeline._unpack_audio_latents(tokens, latent_frames, num_mel_bins=latent_mel)
        return latents.to(self.dtype)

    def decode_audio(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised audio latents [B, C', T', M'] → log-mel [B, C, 4·T' − 3, mel_bins] (float32)."""
        from diffusers import LTX2Pipeline

        audio_vae = self._need("audio_vae", "decode_audio")
        if latents.ndim != 4 or latents.shape[1] != audio_vae.config.latent_channels:
            raise BadInput(
                f"decode_audio takes latents [B, {audio_vae.config.latent_channels}, T', M'], "
                f"got {tuple(latents.shape)}"
            )
        _, _, latent_frames, latent_mel = latents.shape
        with torch.no_grad():
            tokens = LTX2Pipeline._pack_audio_latents(latents.to(self.device, torch.float32))  # [B, T', C'·M']
            tokens = LTX2Pipeline._denormalize_audio_latents(tokens, audio_vae.latents_mean, audio_vae.latents_std)
            z = LTX2Pipeline._unpack_audio_latents(tokens, latent_frames, num_mel_bins=latent_mel)
            mel = audio_vae.decode(z.to(audio_vae.dtype), return_dict=False)[0]  # [B, C, T, mel_bins]
        return mel.float()

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, C, T, mel_bins] → waveform [B, C, T · hop'] float32 at vocoder_sample_rate."""
        vocoder = self._need("vocoder", "vocode")
        self._check_mel(mel, "vocode")
        with torch.no_grad():
            wav = vocoder(mel.to(self.device, vocoder.dtype))  # [B, C, N]
        return wav.float()

    # ---- placement and saving

    def to(self, device: str | torch.device, dtype: torch.dtype | str | None = None) -> Backbone:
        """Move (and optionally cast) every loaded part; returns self."""
        self.device = torch.device(device)
        if dtype is not None:
            self.dtype = _resolve_dtype(dtype, self.device)
        for module in self._modules().values():
            if module.dtype == self.dtype:
                if module.device != self.device:
                    module.to(self.device)
                continue
            with _quiet_empty_fp32_warning(module):
                module.to(device=self.device, dtype=self.dtype)
        return self

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write the loaded parts as a diffusers-format directory (one subfolder each), atomically: into a temporary
        folder next to `path`, then renamed over it."""
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise BadInput(f"{target} is a file; save_pretrained writes a directory")
        if target.is_dir() and any(target.iterdir()) and not any((target / c).is_dir() for c in COMPONENTS):
            raise BadUsage(f"{target} is a non-empty directory that is not a model directory; choose another path")
        parts: dict[str, Any] = {**self._modules()}
        if self.tokenizer is not None:
            parts["tokenizer"] = self.tokenizer
        dropped = [c for c in COMPONENTS if c not in parts and (target / c).is_dir()]
        if dropped:
            raise BadUsage(
                f"{target} holds {', '.join(dropped)}, which this backbone did not load; saving would drop them, "
                "so save to a new path"
            )
        with atomic_folder(target) as staging:
            for name, part in parts.items():
                part.save_pretrained(staging / name)

    # ---- internals

    def _modules(self) -> dict[str, torch.nn.Module]:
        names = ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def _need(self, part: str, user: str) -> Any:
        value = getattr(self, part)
        if value is None:
            raise BadUsage(
                f"{user} needs the {part}, which this backbone was loaded without (load_backbone components)"
            )
        return value

    def _check_mel(self, mel: torch.Tensor, user: str) -> None:
        if not isinstance(mel, torch.Tensor) or mel.ndim != 4 or mel.shape[-1] != self.mel_bins:
            got = tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__
            raise BadInput(f"{user} takes a log-mel [B, channels, T, {self.mel_bins}], got {got}")


def load_backbone(
    model: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    components: set[str] | None = None,
    vae_tiling: VaeTiling | bool = True,
) -> Backbone:
    """Load LTX-2's components. `model`: None → $AVCTL_MODEL → Lightricks/LTX-2; "tiny" → the built-in test preset;
    "pocket" → the CPU-sized model pretrained on the procedural world (weights in the package); a directory → a
    diffusers-format LTX-2 folder; otherwise a hub id, read from the local HF cache only (never
    downloaded); "shape" / "shape:L" → LTX-2's real configs with seeded random weights (L transformer and text
    encoder blocks), see avctl.presets. `components` limits what is loaded (the rest stays None); default all.
    `vae_tiling`: tiled video encode and decode (VaeTiling's defaults), False for the untiled VAE, or a VaeTiling."""
    from avctl import presets

    wanted = _resolve_components(components)
    target_device = torch.device(device) if device is not None else _default_device()
    name = os.fspath(model) if model is not None else MODEL.get(DEFAULT_MODEL_ID)
    if not name.strip():
        raise BadUsage("the model name is empty; pass a directory, a hub id or 'tiny'")
    # The real-shape presets are built in bf16 on a CPU too: fp32 would double what a CPU test has to hold.
    real_shape = presets.is_shape(name)
    target_dtype = _resolve_dtype(dtype if dtype is not None or not real_shape else "bf16", target_device)
    if real_shape:
        parts, configs = presets.build_shape(name, wanted, target_device, target_dtype)
    elif name == TINY:
        parts, configs = _build_tiny(wanted)
    elif name == POCKET:
        directory = _pocket_directory()
        parts = _load_directory(directory, wanted, target_dtype, None)
        configs = _directory_configs(directory)
    else:
        directory, from_hub = _locate(name)
        parts = _load_directory(directory, wanted, target_dtype, name if from_hub else None)
        configs = _directory_configs(directory)
    backbone = Backbone(
        model_id=name,
        device=target_device,
        dtype=target_dtype,
        configs=configs,
        **{c: parts.get(c) for c in COMPONENTS},
    )
    backbone.set_vae_tiling(vae_tiling)
    _check_fit(backbone)
    backbone.to(target_device, target_dtype)
    for module in backbone._modules().values():
        module.eval()
    return backbone


def _axis_stride(cells: int, tile: int, stride: int, reflect: bool) -> int:
    """The stride in latent cells along one axis of `cells`: a whole tile where one tile spans the axis (diffusers
    splits both axes once either exceeds a tile), else the stride nearest the asked one whose last tile is at least
    2 cells wide: reflect padding cannot pad a 1-cell tile, and diffusers 0.42 decodes one and fails."""
    if cells <= tile:
        return tile
    if not reflect:
        return stride
    for k in sorted(range(1, tile + 1), key=lambda k: (k == tile, abs(k - stride), -k)):
        if (cells - 1) % k:
            return k
    raise BadUsage(f"VAE tiles of {tile} latent cells cannot split {cells} cells; use larger tiles or --no-vae-tiling")


@contextlib.contextmanager
def _quiet_empty_fp32_warning(module: torch.nn.Module) -> Iterator[None]:
    """diffusers' ModelMixin.to warns about "modules that should be kept in float32: []" on every cast, even when
    that list is empty; silence it only then."""
    if getattr(module, "_keep_in_fp32_modules", None):
        yield
        return
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


# ---- resolving arguments


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise BadUsage(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32") from None


def _resolve_components(components: set[str] | None) -> set[str]:
    if components is None:
        return set(COMPONENTS)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise BadUsage(f"unknown backbone components {sorted(unknown)}; choose from {', '.join(COMPONENTS)}")
    return set(components)


def _hub_cache_dir() -> str:
    """The HF hub cache as the environment names it now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    cache = HF_HUB_CACHE.get() or HUGGINGFACE_HUB_CACHE.get()
    if cache:
        return cache
    home = HF_HOME.get()
    if home:
        return os.path.join(os.path.expanduser(home), "hub")
    return constants.HF_HUB_CACHE


def _download_hint(model_id: str) -> str:
    local = f"./models/{model_id.split('/')[-1]}"
    include = " ".join(f"'{c}/*'" for c in (*COMPONENTS, "scheduler"))
    return (
        f"download it with `hf download {model_id} --include model_index.json {include} --local-dir {local}` "
        f"and pass `--model {local}` (or set {MODEL.name})"
    )


def _locate(name: str) -> tuple[Path, bool]:
    """(directory, came from the hub cache) for a model name that is not `tiny`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        return path, False
    if path.exists():
        raise BadInput(f"{name} is a file; --model takes a diffusers-format model directory, a hub id or 'tiny'")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise BadInput(
            f"model directory {name} does not exist; pass a diffusers-format LTX-2 directory, a hub id or 'tiny'"
        ) from None
    cache = _hub_cache_dir()
    try:
        snapshot = snapshot_download(name, local_files_only=True, cache_dir=cache)
    except (LocalEntryNotFoundError, OSError):
        raise MissingWeights(
            f"{name} is neither a local directory nor in the Hugging Face cache ({cache}); {_download_hint(name)}"
        ) from None
    return Path(snapshot), True


# ---- loading a diffusers-format directory


def _vocoder_class(folder: Path) -> Any:
    """LTX2Vocoder, or LTX2VocoderWithBWE where the saved config names it (LTX-2.3)."""
    from diffusers.pipelines.ltx2 import LTX2Vocoder, LTX2VocoderWithBWE

    with contextlib.suppress(OSError, ValueError):
        if json.loads((folder / "config.json").read_text()).get("_class_name") == "LTX2VocoderWithBWE":
            return LTX2VocoderWithBWE
    return LTX2Vocoder


def _load_directory(directory: Path, wanted: set[str], dtype: torch.dtype, hub_id: str | None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    missing = [c for c in COMPONENTS if c in wanted and not (directory / c).is_dir()]
    if missing:
        if hub_id is not None:
            raise MissingWeights(
                f"the cached {hub_id} ({directory}) lacks {', '.join(missing)}; {_download_hint(hub_id)}"
            )
        raise BadInput(
            f"{directory} is not a diffusers-format LTX-2 directory: no {', '.join(f'{m}/' for m in missing)} "
            f"subfolder; pass the folder that holds {', '.join(f'{c}/' for c in COMPONENTS)}"
        )
    classes = component_classes()
    parts: dict[str, Any] = {}
    for name in COMPONENTS:
        if name not in wanted:
            continue
        try:
            if name == "tokenizer":
                parts[name] = AutoTokenizer.from_pretrained(directory, subfolder=name, local_files_only=True)
            elif name == "text_encoder":
                parts[name] = classes[name].from_pretrained(
                    directory, subfolder=name, dtype=dtype, local_files_only=True, use_safetensors=True
                )
            else:
                cls = _vocoder_class(directory / name) if name == "vocoder" else classes[name]
                parts[name] = cls.from_pretrained(
                    directory, subfolder=name, torch_dtype=dtype, local_files_only=True, use_safetensors=True
                )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if hub_id is not None:
                raise MissingWeights(
                    f"cannot load {name} of the cached {hub_id} ({reason}); {_download_hint(hub_id)}"
                ) from e
            raise BadInput(f"cannot load {directory / name}: {reason}") from e
    return parts


def _canonical_json(path: Path) -> Any:
    return _without_volatile_keys(json.loads(path.read_text()))


def _without_volatile_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _without_volatile_keys(v)
            for k, v in data.items()
            if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
        }
    if isinstance(data, list):
        return [_without_volatile_keys(v) for v in data]
    return data


def _directory_configs(directory: Path) -> dict[str, Any]:
    """Canonical config of every component folder present: model config.json files (minus who-wrote-it keys) and, for
    the tokenizer, its config plus a digest of its vocabulary files."""
    configs: dict[str, Any] = {}
    for name in COMPONENTS:
        folder = directory / name
        if not folder.is_dir():
            continue
        try:
            if name == "tokenizer":
                entry: dict[str, Any] = {}
                for file in sorted(p for p in folder.iterdir() if p.is_file()):
                    if file.suffix == ".json":
                        # A used tokenizer saves its last call's padding / truncation / max_length too; keep only
                        # what changes the token ids.
                        if file.name == "tokenizer.json":
                            data = json.loads(file.read_text())
                            data = {k: v for k, v in data.items() if k not in ("padding", "truncation")}
                        elif file.name == "tokenizer_config.json":
                            data = _canonical_json(file)
                            data = {k: v for k, v in data.items() if k.endswith("_token") or k in _TOKENIZER_KEYS}
                        else:
                            data = _canonical_json(file)
                        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
                        entry[file.name] = hashlib.sha256(text.encode()).hexdigest()
                    else:
                        entry[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
                configs[name] = entry
            elif (folder / "config.json").is_file():
                configs[name] = _canonical_json(folder / "config.json")
        except (OSError, ValueError, AttributeError) as e:  # AttributeError: a JSON file that is not an object
            raise BadInput(f"cannot read the config in {folder}: {e}") from e
    return configs


def _check_fit(backbone: Backbone) -> None:
    """The loaded parts must form one pipeline; say which pair does not fit instead of failing mid-forward."""
    problems: list[str] = []
    tr, vae, avae = backbone.transformer, backbone.vae, backbone.audio_vae
    voc, con, te = backbone.vocoder, backbone.connectors, backbone.text_encoder
    if tr is not None and vae is not None and tr.config.in_channels != vae.config.latent_channels:
        problems.append(f"transformer in_channels {tr.config.in_channels} != vae latent {vae.config.latent_channels}")
    if avae is not None:
        packed = avae.config.latent_channels * avae.config.mel_bins // avae.mel_compression_ratio
        if tr is not None and tr.config.audio_in_channels != packed:
            problems.append(f"transformer audio_in_channels {tr.config.audio_in_channels} != packed audio {packed}")
        if avae.latents_mean.numel() != packed:
            problems.append(f"audio_vae latents_mean has {avae.latents_mean.numel()} entries, packed audio {packed}")
        if voc is not None and voc.config.in_channels != avae.config.output_channels * avae.config.mel_bins:
            problems.append(f"vocoder in_channels {voc.config.in_channels} != channels × mel bins")
    # LTX-2.3-style transformers (no caption projection) take the connectors' per-modality widths instead.
    uses_caption_projection = tr is not None and tr.config.use_prompt_embeddings
    if con is not None and uses_caption_projection and tr.config.caption_channels != con.config.caption_channels:
        problems.append(f"transformer caption_channels {tr.config.caption_channels} != connectors")
    if con is not None and te is not None:
        text = te.config.get_text_config()
        if text.hidden_size != con.config.caption_channels:
            problems.append(f"text encoder width {text.hidden_size} != connectors {con.config.caption_channels}")
        if text.num_hidden_layers + 1 != con.config.text_proj_in_factor:
            problems.append(
                f"connectors take {con.config.text_proj_in_factor} stacked layers, the text encoder gives "
                f"{text.num_hidden_layers + 1}"
            )
    if problems:
        raise BadInput(f"the components of {backbone.model_id} do not fit together: {'; '.join(problems)}")


# ---- the pocket preset


def _pocket_directory() -> Path:
    """The packaged pocket weights; MissingWeights naming what is absent and how to rebuild it."""
    absent = [c for c in COMPONENTS if not (POCKET_DIR / c).is_dir() or not any((POCKET_DIR / c).glob("*.json"))]
    absent += [c for c in COMPONENTS if c != "tokenizer" and c not in absent
               and not any((POCKET_DIR / c).glob("*.safetensors"))]
    if absent:
        raise MissingWeights(
            f"the pocket weights are missing from {POCKET_DIR} (no {', '.join(absent)}); reinstall avctl (they ship "
            "as package data) or rebuild them with `python examples/pocket_pretrain.py`"
        )
    return POCKET_DIR


# ---- the tiny preset

TINY_SEED = 0
TINY_REGISTERS = 8

def _tiny_text_encoder(tokenizer: PreTrainedTokenizerBase) -> Gemma3ForConditionalGeneration:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    vocab = tokenizer.get_vocab()
    config = Gemma3Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 4 * TINY_MAX_LENGTH,
            "sliding_window": TINY_MAX_LENGTH // 2,
            "pad_token_id": vocab["[PAD]"],
            "bos_token_id": vocab["<bos>"],
            "eos_token_id": vocab["<eos>"],
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
    )
    return Gemma3ForConditionalGeneration(config)


def tiny_connectors(connectors_class: Any, text_layers: int = 2) -> Any:
    """The small text connectors tiny and pocket share: 32 channels, 2 layers of 2 heads per stream."""
    return connectors_class(
        caption_channels=32,
        text_proj_in_factor=text_layers + 1,  # every Gemma layer plus the embeddings, stacked
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16,
        video_connector_num_layers=2,
        video_connector_num_learnable_registers=TINY_REGISTERS,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16,
        audio_connector_num_layers=2,
        audio_connector_num_learnable_registers=TINY_REGISTERS,
        rope_type="split",
    )


def tiny_audio_vae(audio_vae_class: Any) -> Any:
    """The small audio VAE tiny and pocket share: 2 latent channels × 16 mel bins per token."""
    return audio_vae_class(
        base_channels=32,  # = latents_mean/std size = packed token width 2 · 64/4
        ch_mult=(1, 1, 1),
        num_res_blocks=1,
        latent_channels=2,
        mel_bins=64,
    )


def tiny_vocoder(vocoder_class: Any, dilations: tuple[int, ...]) -> Any:
    """The small vocoder tiny and pocket share (pocket's has one more dilation, for a longer receptive field)."""
    return vocoder_class(in_channels=2 * 64, hidden_channels=32, resnet_kernel_sizes=[3],
                         resnet_dilations=[list(dilations)])


def _build_tiny(wanted: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seeded random-init small versions of every LTX-2 class (all built, so the config hash covers all; the
    unwanted ones are dropped). Widths: Gemma 32 = connectors = caption_channels; transformer video 2 heads × 16,
    audio 2 heads × 8, 2 layers; video VAE 16 latent channels at 32×/8×; audio VAE 2 latent channels × 16 mel/4."""
    classes = component_classes()
    text_layers = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        tokenizer = tiny_tokenizer()
        text_encoder = _tiny_text_encoder(tokenizer)
        parts: dict[str, Any] = {
            "tokenizer": tokenizer,
            "text_encoder": text_encoder,
            "connectors": tiny_connectors(classes["connectors"], text_layers),
            "transformer": classes["transformer"](
                in_channels=16,
                out_channels=16,
                num_attention_heads=2,
                attention_head_dim=16,
                cross_attention_dim=32,
                audio_in_channels=32,
                audio_out_channels=32,
                audio_num_attention_heads=2,
                audio_attention_head_dim=8,
                audio_cross_attention_dim=16,
                num_layers=2,
                caption_channels=32,
                rope_type="split",
            ),
            "vae": classes["vae"](
                latent_channels=16,
                block_out_channels=(8, 16, 32, 64),
                decoder_block_out_channels=(8, 16, 32),
                layers_per_block=(1, 1, 1, 1, 1),
                decoder_layers_per_block=(1, 1, 1, 1),
                decoder_causal=False,
                spatial_compression_ratio=32,
                temporal_compression_ratio=8,
            ),
            "audio_vae": tiny_audio_vae(classes["audio_vae"]),
            "vocoder": tiny_vocoder(classes["vocoder"], dilations=(1,)),
        }
    with tempfile.TemporaryDirectory(prefix="avctl-tiny-config-") as scratch:
        # Hash what save_pretrained would write, so a saved copy of tiny hashes the same.
        for name, part in parts.items():
            if name == "tokenizer":
                part.save_pretrained(Path(scratch) / name)
            elif name == "text_encoder":
                part.config.save_pretrained(Path(scratch) / name)
            else:
                part.save_config(Path(scratch) / name)
        configs = _directory_configs(Path(scratch))
    return {n: p for n, p in parts.items() if n in wanted}, configs


def open_backbone(model: str | None, components: set[str] | None = None, dtype: torch.dtype | str | None = None,
                  vae_tiling: VaeTiling | bool = True) -> Backbone:
    """`load_backbone` as the commands call it. The tiny and pocket models' ops are too small to gain from
    threads — on 2 shared cores extra threads made tiny's steps ~10× slower — so they run on one unless
    OMP_NUM_THREADS says otherwise."""
    from avctl import env

    if env.model_name(model) in (TINY, POCKET) and not env.OMP_NUM_THREADS.is_set():
        torch.set_num_threads(1)
    return load_backbone(model, dtype=dtype, components=components, vae_tiling=vae_tiling)
