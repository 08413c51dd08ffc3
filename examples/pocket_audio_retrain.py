"""A pocket variant with a better-trained audio VAE, to measure how much pocket's weak audio side holds back the
audio-intensity claim (docs/pocket.md). Writes a separate diffusers folder; the shipped pocket is not changed.

    OMP_NUM_THREADS=2 python examples/pocket_audio_retrain.py --out runs/pocket_audio --threads 2
    OMP_NUM_THREADS=1 python examples/pocket_claims.py --model runs/pocket_audio --claims audio --out claims_audio/

Steps, from the pocket pretrained by examples/pocket_pretrain.py: the audio VAE trains --audio-vae-steps more on the
world's log-mels (pretrained: 150 steps, whose reconstructions keep an envelope correlation of about 0.16); its latent
statistics are re-measured; the transformer, which reads those latents, is fine-tuned for --transformer-steps on the
re-encoded world (video latents unchanged); a new, wider vocoder (--vocoder-hidden channels) trains for
--vocoder-steps on a loudness loss (avctl.pocket.vocoder_envelope_loss), since the pretrained one gives a
near-constant waveform. With --out at the shipped pocket folder its MODEL_CARD.md gains this stage and new hashes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avctl import pocket
from avctl.backbone import load_backbone
from avctl.world import clip_seed, make_clip

PIPELINE_FILES = ("model_index.json", "scheduler/scheduler_config.json")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mel_envelope(mel: torch.Tensor) -> np.ndarray:
    return torch.logsumexp(2 * mel.float(), dim=-1).mean(dim=(0, 1)).numpy()


@torch.no_grad()
def reconstruction_envelope(backbone: object, clips: int = 12) -> float:
    """Mean correlation of held-out clips' mel envelopes with their audio-VAE reconstructions' (world seed 202)."""
    values = []
    for k in range(clips):
        clip = make_clip(clip_seed(202, k), pocket.CLIP_SIZE, pocket.CLIP_FRAMES)
        wav = pocket.resample(torch.from_numpy(clip.audio)[None], clip.sample_rate, backbone.audio_sample_rate)
        mel = backbone.waveform_to_mel(wav)
        a, b = mel_envelope(mel), mel_envelope(backbone.decode_audio(backbone.encode_audio(mel)))
        n = min(len(a), len(b))
        values.append(float(np.corrcoef(a[:n], b[:n])[0, 1]))
    return float(np.mean(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="checkpoints (default OUT.work; resumable)")
    ap.add_argument("--clips", type=int, default=640)
    ap.add_argument("--audio-vae-steps", type=int, default=1000)
    ap.add_argument("--transformer-steps", type=int, default=600)
    ap.add_argument("--transformer-lr", type=float, default=3e-4)
    ap.add_argument("--vocoder-steps", type=int, default=1500)
    ap.add_argument("--vocoder-hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or args.out.with_name(args.out.name + ".work")

    backbone = load_backbone("pocket", device="cpu")
    log(f"shipped audio VAE: held-out reconstruction envelope correlation {reconstruction_envelope(backbone):.3f}")
    data = pocket.world_data(args.clips, args.seed, progress=log)
    mels = backbone.waveform_to_mel(pocket.resample(data.audio, 48_000, backbone.audio_sample_rate))
    backbone.audio_vae.requires_grad_(True)
    pocket.run_stage("audio_vae", backbone.audio_vae, pocket.audio_vae_loss(backbone.audio_vae, mels),
                     args.audio_vae_steps, lr=1e-3, seed=args.seed + 12, work=work, log=log, log_every=100)
    backbone.audio_vae.requires_grad_(False)
    pocket.set_audio_latent_stats(backbone, mels)
    log(f"retrained audio VAE: held-out reconstruction envelope correlation {reconstruction_envelope(backbone):.3f}")

    latents = pocket.encode_world(backbone, data)
    backbone.transformer.requires_grad_(True)
    pocket.run_stage("transformer", backbone.transformer,
                     pocket.flow_loss(backbone.transformer, latents, batch=args.batch), args.transformer_steps,
                     lr=args.transformer_lr, seed=args.seed + 14, work=work, log=log, log_every=20, save_every=50)
    backbone.transformer.requires_grad_(False)

    from avctl.presets import component_classes

    torch.manual_seed(args.seed + 13)
    vocoder = component_classes()["vocoder"](in_channels=2 * 64, hidden_channels=args.vocoder_hidden,
                                             resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]])
    wav = pocket.resample(data.audio, 48_000, backbone.vocoder_sample_rate)
    hop_out = backbone.vocoder_sample_rate * backbone.audio_hop // backbone.audio_sample_rate
    window = round(0.020 * backbone.vocoder_sample_rate)  # eval's 20 ms envelope windows
    pocket.run_stage("vocoder", vocoder, pocket.vocoder_envelope_loss(vocoder, mels, wav, hop_out, window),
                     args.vocoder_steps, lr=1e-3, seed=args.seed + 13, work=work, log=log, log_every=100)
    vocoder.requires_grad_(False)
    backbone.vocoder = vocoder
    log(f"vocoder: held-out waveform envelope correlation from the true mel {vocoder_envelope(backbone):.3f}")

    card = args.out / "MODEL_CARD.md"
    previous = card.read_text() if card.is_file() else None
    kept = {name: (args.out / name).read_bytes() for name in PIPELINE_FILES if (args.out / name).is_file()}
    backbone.save_pretrained(args.out)
    for name, data in kept.items():  # save_pretrained clears the folder; these are not the backbone's
        (args.out / name).parent.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_bytes(data)
    pocket.write_pipeline_files(args.out)
    for config in args.out.glob("*/config.json"):  # no machine paths in shipped files
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    seconds = sum(pocket.stage_seconds(work, name) for name in ("audio_vae", "transformer", "vocoder"))
    if previous is not None:
        card.write_text(updated_card(previous, args, seconds))
    log(f"saved {args.out}")


@torch.no_grad()
def vocoder_envelope(backbone: object, clips: int = 12) -> float:
    """Mean envelope correlation (eval's 20 ms RMS in dB, at 16 kHz) of held-out clips' audio with the vocoder's
    waveform from their true log-mel."""
    from avctl.metrics import ENVELOPE_SAMPLE_RATE, audio_envelope_correlation

    values = []
    for k in range(clips):
        clip = make_clip(clip_seed(202, k), pocket.CLIP_SIZE, pocket.CLIP_FRAMES)
        wav = pocket.resample(torch.from_numpy(clip.audio)[None], clip.sample_rate, backbone.audio_sample_rate)
        out = backbone.vocode(backbone.waveform_to_mel(wav))[0].float().mean(0, keepdim=True)
        source = pocket.resample(torch.from_numpy(clip.audio).mean(0, keepdim=True), clip.sample_rate,
                                 ENVELOPE_SAMPLE_RATE)
        made = pocket.resample(out, backbone.vocoder_sample_rate, ENVELOPE_SAMPLE_RATE)
        values.append(audio_envelope_correlation(source[0].numpy(), made[0].numpy(), ENVELOPE_SAMPLE_RATE))
    return float(np.mean(values))


def updated_card(card: str, args: argparse.Namespace, seconds: float) -> str:
    """The model card with this stage after "How it was made" and the file table re-hashed."""
    import hashlib

    head, _, rest = card.partition("## Files")
    tail = rest[rest.find("\n## ", 1):] if "\n## " in rest[1:] else ""
    head = head.split("## Audio retrain")[0].rstrip() + "\n\n"
    files = sorted(p for p in args.out.rglob("*") if p.is_file() and p.name != "MODEL_CARD.md")
    total = sum(p.stat().st_size for p in files)
    lines = [
        "## Audio retrain",
        "",
        "Then, because the pretrained audio side could not carry a loudness control (docs/pocket.md):",
        "",
        f"    OMP_NUM_THREADS={args.threads} python examples/pocket_audio_retrain.py --out avctl/weights/pocket "
        f"--threads {args.threads} --clips {args.clips} --audio-vae-steps {args.audio_vae_steps} "
        f"--transformer-steps {args.transformer_steps} --transformer-lr {args.transformer_lr} "
        f"--vocoder-steps {args.vocoder_steps} --vocoder-hidden {args.vocoder_hidden} --seed {args.seed}",
        "",
        "| stage | what | steps |",
        "|---|---|---|",
        f"| 3 | audio VAE, {args.audio_vae_steps} more steps of the same loss (L1 on log-mel, batch 4, lr 1e-3) "
        f"| {args.audio_vae_steps} |",
        f"| 3 | transformer fine-tuned on the re-encoded world (rectified flow, batch {args.batch}, lr "
        f"{args.transformer_lr:g}) | {args.transformer_steps} |",
        f"| 3 | a new vocoder ({args.vocoder_hidden} hidden channels), L1 on 20 ms log power (loudness), batch 4, "
        f"lr 1e-3 | {args.vocoder_steps} |",
        "",
        f"- compute time of these stages: {seconds / 60:.1f} min",
        "",
        f"## Files ({total / 1e6:.2f} MB)",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *[f"| {p.relative_to(args.out).as_posix()} | {p.stat().st_size} | "
          f"{hashlib.sha256(p.read_bytes()).hexdigest()} |" for p in files],
    ]
    return head + "\n".join(lines) + "\n" + tail


if __name__ == "__main__":
    main()
