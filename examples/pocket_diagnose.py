"""Why a control LoRA on pocket does (not) learn: three quick checks on a pocket-format model (minutes on a CPU).

    OMP_NUM_THREADS=1 python examples/pocket_diagnose.py                 # the packaged pocket
    OMP_NUM_THREADS=1 python examples/pocket_diagnose.py --model DIR     # a candidate from pocket_pretrain.py --out

1. VAE round trip of world clips: PSNR and edge F1 against their own Canny control (the ceiling of the claims).
2. VAE round trip of the Canny controls themselves: the share of edge pixels (≥ 128) that come back as edges. A VAE
   that never saw line drawings returns them dark, a sign the references reach the transformer badly encoded.
3. The same LoRA recipe with two references on the parallel canvas: the canny control, and the target clip itself
   (an identity control). The identity run shows what the canvas + LoRA path can learn in the steps given; the gap
   to the canny run is what the encoded control fails to carry.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from pocket_claims import control_for, world_samples

from avctl.backbone import load_backbone
from avctl.metrics import edge_f1
from avctl.modalities.canny import CANNY
from avctl.train import TrainConfig, train
from avctl.world import clip_seed, make_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pocket")
    ap.add_argument("--size", type=int, default=64, help="clip size the model was pretrained at")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100, help="LoRA steps per reference kind")
    args = ap.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    held = [make_clip(clip_seed(202, k), args.size, 17) for k in range(4)]

    psnr, f1, kept = [], [], []
    for clip in held:
        rec = backbone.decode_video(backbone.encode_video(torch.from_numpy(clip.frames)[None]))[0].numpy()
        mse = np.mean((rec.astype(np.float64) - clip.frames) ** 2)
        psnr.append(10 * np.log10(255.0**2 / max(mse, 1e-12)))
        f1.append(edge_f1(control_for(clip, 2), rec))
        control = control_for(clip, 2)
        back = backbone.decode_video(backbone.encode_video(torch.from_numpy(control)[None]))[0].numpy()
        edges = control[..., 0] >= 128
        kept.append(float((back[..., 0][edges] >= 128).mean()))
    report = {"vae_psnr_db": float(np.mean(psnr)), "vae_edge_f1": float(np.mean(f1)),
              "control_edges_kept": float(np.mean(kept))}
    print(json.dumps(report))

    train_clips = [make_clip(clip_seed(201, k), args.size, 17) for k in range(args.clips)]
    samples = world_samples(backbone, train_clips, 1)
    meta = {"model_id": backbone.model_id, "config_hash": backbone.config_hash()}
    modality = dataclasses.replace(CANNY, downscale=1)
    for kind in ("identity", "canny"):
        use = [dataclasses.replace(s, reference=s.video.clone()) for s in samples] if kind == "identity" else samples
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(modality="canny", out=Path(out), steps=args.steps, rank=32, lr=3e-3, lr_end=3e-4,
                              batch_size=4, seed=0, save_every=args.steps)
            result = train(cfg, modality, use, copy.deepcopy(backbone.transformer), meta, resume=False)
        first, last = float(np.mean(result.losses[:10])), float(np.mean(result.losses[-10:]))
        report[f"{kind}_loss"] = [first, last]
        print(json.dumps({"reference": kind, "loss_first10": round(first, 4), "loss_last10": round(last, 4)}))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
