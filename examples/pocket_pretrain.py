"""Pretrain the pocket LTX-2 on the procedural world, reproducibly, on a CPU.

    OMP_NUM_THREADS=2 python examples/pocket_pretrain.py --threads 2     # the shipped weights (about 82 min, 2 cores)
    OMP_NUM_THREADS=1 python examples/pocket_pretrain.py --work runs/p1  # resumes where runs/p1 stopped

Stage 1 trains the video VAE, audio VAE and vocoder as autoencoders on world clips; stage 2 trains the transformer as
a rectified-flow text → video + audio model on their latents (avctl.pocket). Every stage checkpoints into --work and
resumes from there, bit-exactly for the same thread count. At the end the weights go to --out as a diffusers-format
folder (what `load_backbone("pocket")` reads), with MODEL_CARD.md (steps, seed, time, machine, sha256) and a PNG of
reconstructions and samples.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avctl import pocket
from avctl.backbone import load_backbone


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/pocket_pretrain"), help="checkpoints (resumable)")
    ap.add_argument("--out", type=Path, default=pocket.WEIGHTS_DIR, help="where the final weights go")
    ap.add_argument("--png", type=Path, default=Path("docs/pocket_pretrain.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=640, help="world clips for training")
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--audio-vae-steps", type=int, default=150)
    ap.add_argument("--vocoder-steps", type=int, default=300)
    ap.add_argument("--transformer-steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=8, help="transformer batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-report", action="store_true", help="skip the PNG and the model card (pilot runs)")
    ap.add_argument("--report-only", action="store_true", help="only redo the PNG and model card from --out")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    started = time.time()
    if args.report_only:
        train_seconds = sum(pocket.stage_seconds(args.work, s) for s in ("vae", "audio_vae", "vocoder", "transformer"))
        report(args, train_seconds, None)
        return
    parts = pocket.build_pocket(args.seed)
    backbone = pocket.backbone_from_parts(parts)
    data = pocket.world_data(args.clips, args.seed, progress=log)
    log(f"{args.clips} world clips ready")

    # ---- stage 1: autoencoders
    # The video VAE sees the world clips plus canny renderings of one clip in four (avctl.pocket.control_renderings,
    # a fifth of its data): a control LoRA reads its reference through this VAE.
    vae_frames = torch.cat([data.frames, pocket.control_renderings(data.frames)])
    pocket.run_stage("vae", parts["vae"], pocket.video_vae_loss(parts["vae"], vae_frames), args.vae_steps,
                     lr=5e-4, seed=args.seed + 1, work=args.work, log=log)
    wav16 = pocket.resample(data.audio, 48_000, backbone.audio_sample_rate)
    mels = backbone.waveform_to_mel(wav16)  # [N, 2, T, 64]
    pocket.run_stage("audio_vae", parts["audio_vae"], pocket.audio_vae_loss(parts["audio_vae"], mels),
                     args.audio_vae_steps, lr=1e-3, seed=args.seed + 2, work=args.work, log=log)
    wav24 = pocket.resample(data.audio, 48_000, backbone.vocoder_sample_rate)
    hop_out = backbone.vocoder_sample_rate * backbone.audio_hop // backbone.audio_sample_rate
    pocket.run_stage("vocoder", parts["vocoder"], pocket.vocoder_loss(parts["vocoder"], mels, wav24, hop_out),
                     args.vocoder_steps, lr=1e-3, seed=args.seed + 3, work=args.work, log=log)
    pocket.set_video_latent_stats(backbone, data.frames)
    pocket.set_audio_latent_stats(backbone, mels)

    # ---- stage 2: the transformer on the world's latents
    latents = pocket.encode_world(backbone, data)
    log(f"latents {tuple(latents.video.shape)} video, {tuple(latents.audio.shape)} audio")
    pocket.run_stage("transformer", parts["transformer"],
                     pocket.flow_loss(parts["transformer"], latents, batch=args.batch),
                     args.transformer_steps, lr=1e-3, seed=args.seed + 4, work=args.work, log=log, log_every=20,
                     save_every=50)
    train_seconds = sum(pocket.stage_seconds(args.work, s) for s in ("vae", "audio_vae", "vocoder", "transformer"))

    backbone.save_pretrained(args.out)
    pocket.write_pipeline_files(args.out)
    log(f"saved {args.out}")
    if args.no_report:
        return
    report(args, train_seconds, time.time() - started)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report(args: argparse.Namespace, train_seconds: float, wall_seconds: float | None) -> None:
    """Reconstructions and samples from the SAVED weights (so the PNG shows what `--model pocket` loads), and the
    model card."""
    from avctl.metrics import contact_sheet, edge_f1
    from avctl.sample import generate

    loaded = load_backbone(str(args.out), device="cpu")
    held = pocket.world_data(4, args.seed + 7919)
    rows, psnrs = [], []
    for i in range(len(held.frames)):
        frames = held.frames[i:i + 1]
        recon = loaded.decode_video(loaded.encode_video(frames))
        mse = ((recon.float() - frames.float()) ** 2).mean()
        psnrs.append(float(10 * torch.log10(255.0 ** 2 / mse)))
        rows += [(f"clip {i}", frames[0].numpy()), (f"VAE reconstruction {i}", recon[0].numpy())]
    samples = []
    for i in range(2):
        out = generate(loaded, held.captions[i], [], width=pocket.CLIP_SIZE, height=pocket.CLIP_SIZE,
                       frames=pocket.CLIP_FRAMES, fps=pocket.CLIP_FPS, steps=30, seed=i, schedule="shifted")
        samples.append(out)
        rows.append((f"sample {i}: {held.captions[i]}", out.frames))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(args.png, rows, n_columns=6, tile_height=96,
                  caption=f"pocket: world clips, their VAE reconstructions (PSNR {np.mean(psnrs):.1f} dB) and "
                          "text-to-video samples (30 steps, cfg 1) from held-out captions")
    from avctl.modalities.base import Clip
    from avctl.modalities.canny import CannyExtractor

    half = (pocket.CLIP_SIZE // 2, pocket.CLIP_SIZE // 2)
    controls = [CannyExtractor()(Clip(held.frames[i].numpy(), held.fps, "held", 0, half)).frames for i in range(2)]
    f1 = float(np.mean([edge_f1(controls[i], s.frames) for i, s in enumerate(samples)]))

    files = sorted(p for p in args.out.rglob("*") if p.is_file() and p.name != "MODEL_CARD.md")
    total = sum(p.stat().st_size for p in files)
    lines = [
        "# pocket: a CPU-sized LTX-2 pretrained on the procedural world",
        "",
        "diffusers' own LTX-2 classes (AutoencoderKLLTX2Video, AutoencoderKLLTX2Audio, LTX2Vocoder, "
        "LTX2TextConnectors, LTX2VideoTransformer3DModel; Gemma3ForConditionalGeneration as the text encoder) in a "
        "small config (avctl/pocket.py), pretrained on clips from avctl/world.py. Load it with "
        "`load_backbone(\"pocket\")` or `--model pocket`.",
        "",
        "## How it was made",
        "",
        f"    OMP_NUM_THREADS={args.threads} python examples/pocket_pretrain.py --seed {args.seed} --clips {args.clips}"
        f" --vae-steps {args.vae_steps} --audio-vae-steps {args.audio_vae_steps} --vocoder-steps "
        f"{args.vocoder_steps} --transformer-steps {args.transformer_steps} --batch {args.batch}",
        "",
        "| stage | what | steps |",
        "|---|---|---|",
        f"| 1 | video VAE, L1+MSE on whole 64×64 frames, 9-frame windows, batch 4, lr 5e-4; the clips plus canny "
        f"renderings (1- and 3-px lines) of one in four of them | {args.vae_steps} |",
        f"| 1 | audio VAE, L1 on log-mel, batch 4, lr 1e-3 | {args.audio_vae_steps} |",
        f"| 1 | vocoder, multi-resolution STFT loss, batch 4, lr 1e-3 | {args.vocoder_steps} |",
        f"| 2 | transformer, rectified flow on joint video+audio latents, batch {args.batch}, lr 1e-3 "
        f"| {args.transformer_steps} |",
        "",
        "Text encoder (random Gemma 3, 2 layers, word-level tokenizer with the world's words) and text connectors "
        "are random-init and frozen: a fixed feature map of the caption words that the transformer learns to read.",
        "",
        f"- seed: {args.seed}; world clips: {args.clips} × {pocket.CLIP_FRAMES} frames, {pocket.CLIP_SIZE}×"
        f"{pocket.CLIP_SIZE}, {pocket.CLIP_FPS:g} fps",
        f"- training time (sum of the stages' measured compute time): {train_seconds / 60:.1f} min"
        + (f"; whole script this run: {wall_seconds / 60:.1f} min" if wall_seconds is not None else ""),
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{args.threads} torch thread(s), shared with other jobs; Python {sys.version.split()[0]}",
        f"- held-out VAE reconstruction PSNR: {np.mean(psnrs):.2f} dB (4 clips); edge F1 of two text-only samples "
        f"against the Canny edges of the clip their caption came from: {f1:.3f} (same caption, another scene: the "
        "base rate a control LoRA has to beat)",
        "",
        f"## Files ({total / 1e6:.2f} MB)",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *[f"| {p.relative_to(args.out).as_posix()} | {p.stat().st_size} | {sha256(p)} |" for p in files],
        "",
    ]
    card = args.out / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    summary = {"train_seconds": train_seconds, "psnr": float(np.mean(psnrs)), "bytes": total}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"model card {card}; {summary}")


if __name__ == "__main__":
    main()
