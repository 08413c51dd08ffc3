"""Write short synthetic clips (moving shapes over a textured background, each with a tone) for the demo.

Usage: python examples/make_clips.py OUT_DIR [--count N] [--size 192x160] [--frames 25] [--fps 24]
Each clip gets a sidecar caption `<stem>.txt`. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from avctl.media import write_video

COLOURS = {"red": (230, 40, 40), "blue": (40, 80, 230), "yellow": (240, 220, 40), "white": (245, 245, 245)}


def make_clip(rng: np.random.Generator, width: int, height: int, frames: int, fps: float):
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = (np.sin(xx / rng.uniform(4, 9)) * np.cos(yy / rng.uniform(4, 9)) * 40 + 90).astype(np.uint8)
    background = np.stack([stripes, (stripes * 0.8).astype(np.uint8), (stripes * 0.6).astype(np.uint8)], -1)
    names = rng.choice(list(COLOURS), size=2, replace=False)
    shapes = [
        {"colour": COLOURS[n], "name": n, "pos": rng.uniform([20, 20], [width - 20, height - 20]),
         "vel": rng.uniform(-3, 3, 2), "r": int(rng.integers(12, 24)), "kind": k}
        for n, k in zip(names, ("circle", "square"), strict=True)
    ]
    video = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        img = background.copy()
        for s in shapes:
            x, y = (s["pos"] + s["vel"] * f).astype(int)
            if s["kind"] == "circle":
                cv2.circle(img, (int(x), int(y)), s["r"], s["colour"], -1)
            else:
                r = s["r"]
                cv2.rectangle(img, (int(x) - r, int(y) - r), (int(x) + r, int(y) + r), s["colour"], -1)
        video[f] = img
    sr = 16000
    t = np.arange(int(frames / fps * sr)) / sr
    tone = 0.2 * np.sin(2 * np.pi * rng.uniform(220, 660) * t)
    audio = np.stack([tone, tone * 0.8]).astype(np.float32)
    caption = f"a {names[0]} circle and a {names[1]} square move over a striped background"
    return video, audio, sr, caption


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--size", default="192x160")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        video, audio, sr, caption = make_clip(rng, width, height, args.frames, args.fps)
        write_video(args.out / f"clip_{i:03d}.mp4", video, args.fps, audio=audio, sample_rate=sr)
        (args.out / f"clip_{i:03d}.txt").write_text(caption + "\n")
    print(f"wrote {args.count} clips to {args.out}")


if __name__ == "__main__":
    main()
