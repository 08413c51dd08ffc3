"""The pocket model: LTX-2's own diffusers classes in a CPU-sized config, and the recipe that pretrains it on the
procedural world (avctl.world).

Config (every part is the class the full model uses):
    video VAE    AutoencoderKLLTX2Video, 8× spatial / 4× temporal (patch 4, one spatiotemporal and one temporal
                 down block), 16 latent channels: a 64×64×17 clip is a 5×8×8 latent (320 tokens)
    audio VAE    AutoencoderKLLTX2Audio at the tiny preset's size (16 kHz, hop 160, 64 mel, 2 latent channels)
    vocoder      LTX2Vocoder, 32 hidden channels, 24 kHz
    text         the tiny preset's Gemma 3 (random, frozen) with a word-level tokenizer that also knows the world's
                 words, and LTX2TextConnectors (random, frozen)
    transformer  LTX2VideoTransformer3DModel, 4 layers, video 2 heads × 32, audio 2 heads × 16,
                 vae_scale_factors (4, 8, 8)

Pretraining (`pretrain`): stage 1 trains the autoencoders on world clips (video VAE on random crops, audio VAE on
mels, vocoder on the mel → waveform map with a multi-resolution STFT loss); their latent statistics become the
VAEs' `latents_mean` / `latents_std`. Stage 2 trains the full transformer as a rectified-flow text → video + audio
model on the world's latents, with avctl's own canvas and forward pass (`build_stream`, `predict`), 10 % empty
captions (for CFG) and 15 % first-frame conditioning (the sampler's `first_frame`). The text side stays random and
frozen: it is a fixed, deterministic feature map of the caption words, which the transformer learns to read.

Every stage is seeded from one torch.Generator and checkpoints (weights, AdamW moments, generator state, step) as
safetensors + JSON, so a run stopped and resumed replays the same draws, and a run repeated with the same thread
count gives bit-identical weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avctl.backbone import POCKET_DIR
from avctl.errors import BadUsage

WEIGHTS_DIR = POCKET_DIR
CLIP_SIZE = 64
CLIP_FRAMES = 17
CLIP_FPS = 24.0


# ------------------------------------------------------------------------------------------------ the config
def build_pocket(seed: int = 0) -> dict[str, Any]:
    """Seeded random-init pocket parts (the starting point of pretraining)."""
    from avctl.backbone import _tiny_text_encoder, tiny_audio_vae, tiny_connectors, tiny_vocoder
    from avctl.presets import component_classes, tiny_tokenizer
    from avctl.world import WORLD_WORDS

    classes = component_classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer(tuple(WORLD_WORDS))
        text_encoder = _tiny_text_encoder(tokenizer)
        return {
            "tokenizer": tokenizer,
            "text_encoder": text_encoder,
            "connectors": tiny_connectors(classes["connectors"]),
            "transformer": classes["transformer"](
                in_channels=16,
                out_channels=16,
                num_attention_heads=2,
                attention_head_dim=32,
                cross_attention_dim=64,
                audio_in_channels=32,
                audio_out_channels=32,
                audio_num_attention_heads=2,
                audio_attention_head_dim=16,
                audio_cross_attention_dim=32,
                num_layers=4,
                caption_channels=32,
                rope_type="split",
                vae_scale_factors=(4, 8, 8),  # RoPE positions in pixels follow the VAE's factors
                perturbed_attn=True,  # STG's perturbed pass (changes no weights)
            ),
            "vae": classes["vae"](
                latent_channels=16,
                block_out_channels=(32, 64),
                decoder_block_out_channels=(32, 64),
                layers_per_block=(1, 1, 1),
                decoder_layers_per_block=(1, 1, 1),
                down_block_types=("LTX2VideoDownBlock3D",) * 2,
                spatio_temporal_scaling=(True, True),
                downsample_type=("spatiotemporal", "temporal"),
                decoder_spatio_temporal_scaling=(True, True),
                upsample_type=("temporal", "spatiotemporal"),
                upsample_residual=(True, True),
                upsample_factor=(2, 2),
                decoder_inject_noise=(False, False, False),
                decoder_causal=False,
                spatial_compression_ratio=8,  # patch 4 × one spatial halving
                temporal_compression_ratio=4,  # two temporal halvings
            ),
            "audio_vae": tiny_audio_vae(classes["audio_vae"]),
            "vocoder": tiny_vocoder(classes["vocoder"], dilations=(1, 3)),
        }


def write_pipeline_files(directory: Path) -> None:
    """model_index.json and scheduler/scheduler_config.json (LTX-2's, from the shipped pocket folder) beside the
    component folders Backbone.save_pretrained wrote, so `LTX2Pipeline.from_pretrained(directory)` loads it."""
    import shutil

    from avctl.backbone import POCKET_DIR

    directory = Path(directory)
    for name in ("model_index.json", "scheduler/scheduler_config.json"):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        if (POCKET_DIR / name).resolve() != (directory / name).resolve():
            shutil.copyfile(POCKET_DIR / name, directory / name)


def backbone_from_parts(parts: dict[str, Any], model_id: str = "pocket (training)") -> Any:
    from avctl.backbone import COMPONENTS, Backbone

    return Backbone(model_id=model_id, device=torch.device("cpu"), dtype=torch.float32,
                    **{c: parts.get(c) for c in COMPONENTS})


# ------------------------------------------------------------------------------------------------ world data
@dataclass
class WorldData:
    frames: torch.Tensor  # [N, F, H, W, 3] uint8
    audio: torch.Tensor  # [N, 2, n] float32 at 48 kHz
    captions: list[str]
    fps: float


def world_data(n: int, seed: int, size: int = CLIP_SIZE, frames: int = CLIP_FRAMES, fps: float = CLIP_FPS,
               progress: Callable[[str], None] | None = None) -> WorldData:
    from avctl.world import clip_seed, make_clip

    clips = []
    for k in range(n):
        clips.append(make_clip(clip_seed(seed, k), size, frames, fps))
        if progress and (k + 1) % 100 == 0:
            progress(f"world clips {k + 1}/{n}")
    return WorldData(
        frames=torch.from_numpy(np.stack([c.frames for c in clips])),
        audio=torch.from_numpy(np.stack([c.audio for c in clips])),
        captions=[c.caption for c in clips],
        fps=fps,
    )


RENDERED_MODALITY = "canny"  # the control the pocket world's VAE also learns to reconstruct (`control_renderings`)


def control_renderings(frames: torch.Tensor, every: int = 4) -> torch.Tensor:
    """Canny renderings of every `every`-th clip, alternately with 1-px and 3-px lines, drawn by the canny modality's
    own extractor (what `avctl prepare canny [--line-width 3]` writes), as [N // every, F, H, W, 3] uint8.

    The video VAE also trains on these. LTX-2's VAE has seen line art in its web-scale data, so a canny reference
    reaches its transformer as latents that still hold the lines; a VAE trained on scenes alone had never seen a line
    drawing, and its reconstruction of a canny control held none of the control's edge pixels."""
    from avctl.extractors import build_extractor
    from avctl.modalities.base import Clip, get_modality

    canny = get_modality(RENDERED_MODALITY)  # through the registry, as `avctl prepare` reaches it
    extractors = tuple(build_extractor(canny, options={"line_width": width}) for width in (1, 3))
    size = (frames.shape[2], frames.shape[3])
    out = []
    for j, i in enumerate(range(0, len(frames), every)):
        clip = Clip(frames=frames[i].numpy(), fps=CLIP_FPS, key=f"world_{i:04d}", seed=0, reference_size=size)
        out.append(torch.from_numpy(np.ascontiguousarray(extractors[j % 2](clip).frames)))
    return torch.stack(out)


def resample(wav: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    import torchaudio

    return torchaudio.functional.resample(wav, rate_in, rate_out)


# ------------------------------------------------------------------------------------------------ stage runner
def _save_stage(path: Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, extra: dict[str, Any]) -> None:
    from avctl.io import save_resume_state

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    moments = {str(i): {"exp_avg": st["exp_avg"].contiguous(), "exp_avg_sq": st["exp_avg_sq"].contiguous(),
                        "step": st["step"]} for i, st in optimizer.state_dict()["state"].items()}
    save_resume_state(path, step, tensors, moments, generator, extra, "avctl-pocket-stage")


def _load_stage(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator) -> tuple[int, dict[str, Any]]:
    from avctl.io import load_resume_state

    loaded = load_resume_state(path)
    if loaded is None:
        return 0, {}
    meta, tensors = loaded
    if meta["torch_threads"] != torch.get_num_threads():
        raise BadUsage(f"{path}.json: saved with {meta['torch_threads']} torch threads, now "
                       f"{torch.get_num_threads()}; use the same count for a bit-exact resume")
    module.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    sd = optimizer.state_dict()
    sd["state"] = {
        int(i): {"step": torch.tensor(s), "exp_avg": tensors[f"exp_avg.{i}"], "exp_avg_sq": tensors[f"exp_avg_sq.{i}"]}
        for i, s in meta["adam_steps"].items()
    }
    optimizer.load_state_dict(sd)
    generator.set_state(tensors["generator"])
    return int(meta["step"]), meta


def cosine_lr(step: int, total: int, lr: float, warmup: int = 20) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def run_stage(name: str, module: torch.nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor], steps: int,
              lr: float, seed: int, work: Path | None = None, save_every: int = 100,
              log: Callable[[str], None] | None = None, log_every: int = 25) -> list[float]:
    """Train `module` for `steps` AdamW steps on `loss_fn(generator)`, resuming from `work/name.json` when present.
    Returns the losses of the steps run now."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    step, meta = (0, {})
    path = Path(work) / name if work is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        step, meta = _load_stage(path, module, optimizer, generator)
    seconds = float(meta.get("seconds", 0.0))
    module.train()
    losses: list[float] = []
    start = time.perf_counter()
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss at step {step + 1}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if log and (step % log_every == 0 or step == steps):
            recent = losses[-log_every:]
            log(f"{name} step {step}/{steps} loss {sum(recent) / len(recent):.4f} "
                f"({seconds + time.perf_counter() - start:.0f} s)")
        if path is not None and (step % save_every == 0 or step == steps):
            _save_stage(path, step, module, optimizer, generator,
                        {"seconds": seconds + time.perf_counter() - start})
    module.eval()
    return losses


def stage_seconds(work: Path, name: str) -> float:
    meta_path = Path(work) / f"{name}.json"
    return float(json.loads(meta_path.read_text()).get("seconds", 0.0)) if meta_path.is_file() else 0.0


# ------------------------------------------------------------------------------------------------ stage 1 losses
def video_vae_loss(vae: torch.nn.Module, frames: torch.Tensor, batch: int = 4, crop: int = CLIP_SIZE,
                   crop_frames: int = 9, kl_weight: float = 1e-6) -> Callable[[torch.Generator], torch.Tensor]:
    """L1 + MSE reconstruction of random `crop`×`crop`×`crop_frames` windows, with a small KL so the latents stay
    bounded and the decoder tolerates latent noise. The default window is the whole 64×64 frame: this VAE starts out
    returning greys, and on whole frames it leaves that state at about step 500–700 (20.6 dB at 800 steps), while on
    32-px crops (4×4 latents, mostly border) it had not by step 1200 (the first pocket build)."""
    n, f, h, w, _ = frames.shape

    def loss(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(n, (batch,), generator=g)
        t0 = torch.randint(f - crop_frames + 1, (batch,), generator=g)
        y0 = torch.randint(h - crop + 1, (batch,), generator=g)
        x0 = torch.randint(w - crop + 1, (batch,), generator=g)
        clips = torch.stack([frames[i, t:t + crop_frames, y:y + crop, x:x + crop]
                             for i, t, y, x in zip(idx.tolist(), t0.tolist(), y0.tolist(), x0.tolist(), strict=True)])
        x = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [B, 3, F, h, w]
        posterior = vae.encode(x).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=g)
        z = posterior.mean + posterior.std * eps
        out = vae.decode(z).sample
        rec = (out - x).abs().mean() + ((out - x) ** 2).mean()
        kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).mean()
        return rec + kl_weight * kl

    return loss


def audio_vae_loss(audio_vae: torch.nn.Module, mels: torch.Tensor, batch: int = 4,
                   kl_weight: float = 1e-6) -> Callable[[torch.Generator], torch.Tensor]:
    n = mels.shape[0]

    def loss(g: torch.Generator) -> torch.Tensor:
        x = mels[torch.randint(n, (batch,), generator=g)]
        posterior = audio_vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        out = audio_vae.decode(z).sample
        t = min(out.shape[2], x.shape[2])
        kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).mean()
        return (out[:, :, :t] - x[:, :, :t]).abs().mean() + kl_weight * kl

    return loss


def _stft_mag(wav: torch.Tensor, n_fft: int) -> torch.Tensor:
    window = torch.hann_window(n_fft)
    spec = torch.stft(wav.reshape(-1, wav.shape[-1]), n_fft, n_fft // 4, window=window, return_complex=True)
    return spec.abs()


def vocoder_loss(vocoder: torch.nn.Module, mels: torch.Tensor, wav24: torch.Tensor, hop_out: int, batch: int = 4,
                 frames: int = 24) -> Callable[[torch.Generator], torch.Tensor]:
    """Multi-resolution STFT loss (spectral convergence + log magnitude) on random mel windows → waveform."""
    n, _, t_mel, _ = mels.shape

    def loss(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(n, (batch,), generator=g)
        t0 = torch.randint(t_mel - frames - 1, (batch,), generator=g)
        x = torch.stack([mels[i, :, t:t + frames] for i, t in zip(idx.tolist(), t0.tolist(), strict=True)])
        y = torch.stack([wav24[i, :, t * hop_out:(t + frames) * hop_out]
                         for i, t in zip(idx.tolist(), t0.tolist(), strict=True)])
        out = vocoder(x)[..., : y.shape[-1]]
        total = torch.zeros(())
        for n_fft in (128, 512, 1024):
            a, b = _stft_mag(out, n_fft), _stft_mag(y, n_fft)
            total = total + (a - b).norm() / b.norm().clamp(min=1e-6)
            total = total + (torch.log(a.clamp(min=1e-5)) - torch.log(b.clamp(min=1e-5))).abs().mean()
        return total

    return loss


def vocoder_envelope_loss(vocoder: torch.nn.Module, mels: torch.Tensor, wav: torch.Tensor, hop_out: int,
                          window: int, batch: int = 4, frames: int = 24) -> Callable[[torch.Generator], torch.Tensor]:
    """L1 between the log power of the vocoder's output and of the true waveform over consecutive `window`-sample
    windows, per channel, on random mel windows: a loudness objective. With pocket's multi-resolution STFT loss, a
    log-mel L1, or the STFT loss added to this one, its vocoder learned no loudness at all (envelope correlation
    ≤ 0.08 from a clip's true mel); with this one alone it follows the envelope, though not the timbre
    (docs/pocket.md)."""
    n, _, t_mel, _ = mels.shape

    def log_power(w: torch.Tensor) -> torch.Tensor:
        w = w.reshape(-1, w.shape[-1])
        usable = w.shape[-1] // window * window
        return torch.log((w[:, :usable].reshape(w.shape[0], -1, window) ** 2).mean(-1) + 1e-6)

    def loss(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(n, (batch,), generator=g)
        t0 = torch.randint(t_mel - frames - 1, (batch,), generator=g)
        x = torch.stack([mels[i, :, t:t + frames] for i, t in zip(idx.tolist(), t0.tolist(), strict=True)])
        y = torch.stack([wav[i, :, t * hop_out:(t + frames) * hop_out]
                         for i, t in zip(idx.tolist(), t0.tolist(), strict=True)])
        out = vocoder(x)[..., : y.shape[-1]]
        return (log_power(out) - log_power(y)).abs().mean()

    return loss


@torch.no_grad()
def set_video_latent_stats(backbone: Any, frames: torch.Tensor, batch: int = 8) -> None:
    """latents_mean / latents_std of the video VAE = per-channel statistics of the posterior mean on `frames`."""
    vae = backbone.vae
    zs = []
    for i in range(0, len(frames), batch):
        x = frames[i:i + batch].permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        zs.append(vae.encode(x).latent_dist.mode())
    z = torch.cat(zs).transpose(0, 1).reshape(vae.config.latent_channels, -1)
    vae.latents_mean.copy_(z.mean(dim=1))
    vae.latents_std.copy_(z.std(dim=1).clamp(min=1e-4))


@torch.no_grad()
def set_audio_latent_stats(backbone: Any, mels: torch.Tensor) -> None:
    """latents_mean / latents_std of the audio VAE over the packed tokens [T', C·M'] (as the pipeline normalises)."""
    from diffusers import LTX2Pipeline

    audio_vae = backbone.audio_vae
    z = audio_vae.encode(mels).latent_dist.mode()
    tokens = LTX2Pipeline._pack_audio_latents(z).reshape(-1, audio_vae.latents_mean.numel())
    audio_vae.latents_mean.copy_(tokens.mean(dim=0))
    audio_vae.latents_std.copy_(tokens.std(dim=0).clamp(min=1e-4))


# ------------------------------------------------------------------------------------------------ stage 2
@dataclass
class Latents:
    video: torch.Tensor  # [N, C, F', H', W'] normalised
    audio: torch.Tensor  # [N, C, T', M'] normalised
    text_video: torch.Tensor  # [N, L, D]
    text_audio: torch.Tensor
    text_mask: torch.Tensor  # [N, L]
    empty: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the "" caption's embeddings [L, D], [L, D], [L]
    fps: float


@torch.no_grad()
def encode_world(backbone: Any, data: WorldData, batch: int = 8) -> Latents:
    videos, audios, tv, ta, tm = [], [], [], [], []
    wav16 = resample(data.audio, 48_000, backbone.audio_sample_rate)
    for i in range(0, len(data.frames), batch):
        videos.append(backbone.encode_video(data.frames[i:i + batch]))
        audios.append(backbone.encode_audio(backbone.waveform_to_mel(wav16[i:i + batch])))
        text = backbone.encode_text(data.captions[i:i + batch])
        tv.append(text.video)
        ta.append(text.audio)
        tm.append(text.mask)
    empty = backbone.encode_text([""])
    return Latents(torch.cat(videos), torch.cat(audios), torch.cat(tv), torch.cat(ta), torch.cat(tm),
                   (empty.video[0], empty.audio[0], empty.mask[0]), data.fps)


def flow_loss(transformer: torch.nn.Module, latents: Latents, batch: int = 8, drop_text: float = 0.1,
              first_frame: float = 0.15) -> Callable[[torch.Generator], torch.Tensor]:
    """Rectified flow on the joint audio + video canvas (avctl.canvas / avctl.forward, no references): x_t =
    (1 − σ)x + σε, predict ε − x, σ from the training schedule (avctl.train.sample_sigmas)."""
    from avctl.canvas import Canvas, build_stream, masked_mse, pack_audio, pack_video
    from avctl.forward import predict
    from avctl.train import noised, sample_sigmas

    n = latents.video.shape[0]
    _, _, f, h, w = latents.video.shape

    def loss(g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(n, (batch,), generator=g)
        v, a = latents.video[idx], latents.audio[idx]
        tv, ta, tm = latents.text_video[idx].clone(), latents.text_audio[idx].clone(), latents.text_mask[idx].clone()
        drop = torch.rand(batch, generator=g) < drop_text
        tv[drop], ta[drop], tm[drop] = latents.empty[0], latents.empty[1], latents.empty[2]
        sigma = sample_sigmas(g, batch, f * h * w)
        nv = torch.randn(v.shape, generator=g)
        na = torch.randn(a.shape, generator=g)
        keep_first = torch.rand(batch, generator=g) < first_frame
        sv = build_stream("video", transformer, noised(v, nv, sigma), sigma, fps=latents.fps)
        sa = build_stream("audio", transformer, noised(a, na, sigma), sigma)
        if keep_first.any():
            # Image conditioning as the sampler does it: the first latent frame clean, at timestep 0, no loss.
            k = h * w
            clean = pack_video(v)[:, :k]
            sv.tokens[keep_first, :k] = clean[keep_first]
            sv.timestep[keep_first, :k] = 0.0
            sv.loss_mask[keep_first, :k] = False
        vp, ap = predict(transformer, Canvas(sv, sa), tv, ta, tm)
        lv = masked_mse(vp, pack_video(nv - v), sv.loss_mask).mean()
        la = masked_mse(ap, pack_audio(na - a), sa.loss_mask).mean()
        return lv + la

    return loss
