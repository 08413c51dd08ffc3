"""The pocket world: a seeded procedural generator of short audio-visual clips with exact ground truth.

A clip is a 2.5D scene: a textured background layer far away and a few coloured shapes, each on its own depth
plane, moving over it while the camera pans. The camera offset at depth d is `camera / d`, so near shapes slide
more than the background (parallax). Each shape has its own tone (a sine at its own pitch, panned by its x
position); a shape "speaks" in stretches, and while it speaks it pulses and its tone is louder. Captions come from
templates over a small vocabulary (`WORLD_WORDS`), so the pocket model's word-level tokenizer covers them.

Because the scene is drawn from its description, the controls are known exactly, not estimated:
    depth     [F, H, W] float32   depth of the visible layer at each pixel (background = BACKGROUND_DEPTH)
    labels    [F, H, W] int16     0 background, i + 1 shape i (the visible one)
    masks     [S, F, H, W] bool   where shape i is visible
    edges     [F, H, W] uint8     255 on the boundaries between visible layers (shape outlines), else 0
    tracks    [S, F, 2] float32   (x, y) centre of shape i in pixels; `visible` [S, F] bool (any pixel visible)
    camera    [F, 2] float32      camera pan (x, y) in pixels at depth 1; `layer_offsets` [L, F, 2] per layer
    speaking  [S, F] bool         who is speaking; `boxes` [S, F, 4] float32 (x0, y0, x1, y1) of each shape

Shapes are rendered at 2× and area-averaged, so outlines are anti-aliased; masks and labels come from the same
2× label map (majority per pixel), so they line up with the pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avctl.errors import BadUsage

SAMPLE_RATE = 48_000
BACKGROUND_DEPTH = 10.0
SUPERSAMPLE = 2

# name → RGB. Shape colours are bright and saturated; backgrounds are muted and darker, so every shape outline is a
# strong edge (a grey-level jump well above Canny's 100/200 thresholds) and the background texture is not.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 60, 50),
    "orange": (250, 150, 30),
    "yellow": (250, 230, 60),
    "green": (70, 220, 90),
    "blue": (80, 150, 255),
    "purple": (190, 100, 240),
    "pink": (255, 140, 200),
    "white": (245, 245, 245),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (70, 70, 75),
    "brown": (85, 60, 40),
    "green": (35, 75, 45),
    "blue": (35, 50, 90),
    "purple": (65, 40, 80),
    "black": (25, 25, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped", "dotted", "wavy", "checkered")
# Tones: a pentatonic set two octaves wide, so any two shapes are told apart by ear and by spectrum.
TONES_HZ = (220.0, 261.6, 293.7, 349.2, 392.0, 440.0, 523.3, 587.3, 698.5, 784.0)

# Every word a caption can use (the pocket tokenizer adds these to the tiny vocabulary).
WORLD_WORDS = (
    "circle", "circles", "square", "squares", "triangle", "triangles", "diamond", "diamonds", "shape", "shapes",
    "plain", "striped", "dotted", "wavy", "checkered", "pans", "pan", "drifts", "drift", "glide", "glides",
    "bounce", "bounces", "speaks", "hums", "camera",
)


@dataclass
class WorldClip:
    frames: np.ndarray  # [F, H, W, 3] uint8
    audio: np.ndarray  # [2, N] float32 in [-1, 1] at sample_rate
    sample_rate: int
    fps: float
    caption: str
    truth: dict[str, np.ndarray] = field(repr=False)
    scene: dict[str, Any] = field(repr=False)  # the drawn description (names, depths, tones), JSON-able


# ------------------------------------------------------------------------------------------------ scene description
def _scene(rng: np.random.Generator, size: int, frames: int, fps: float, max_shapes: int) -> dict[str, Any]:
    n_shapes = int(rng.integers(1, max_shapes + 1))
    colours = rng.choice(list(SHAPE_COLOURS), size=n_shapes, replace=False).tolist()
    tones = rng.choice(len(TONES_HZ), size=n_shapes, replace=False).tolist()
    # Distinct depths, nearest drawn last.
    depths = sorted(rng.uniform(1.5, 6.0, size=n_shapes).tolist(), reverse=True)
    shapes = []
    for i in range(n_shapes):
        radius = float(rng.uniform(0.11, 0.2) * size)
        speed = float(rng.uniform(0.15, 0.5) * size)  # px per second
        angle = float(rng.uniform(0, 2 * np.pi))
        # Speaking stretches: on/off runs of 0.2–0.6 s.
        speaking, t, on = [], 0.0, bool(rng.random() < 0.5)
        while t < frames / fps:
            length = float(rng.uniform(0.2, 0.6))
            if on:
                speaking.append([t, t + length])
            t, on = t + length, not on
        shapes.append({
            "shape": str(rng.choice(SHAPES)),
            "colour": colours[i],
            "depth": float(depths[i]),
            "radius": radius,
            "start": [float(rng.uniform(0.2, 0.8) * size), float(rng.uniform(0.2, 0.8) * size)],
            "velocity": [speed * float(np.cos(angle)), speed * float(np.sin(angle))],
            "spin": float(rng.uniform(-2.0, 2.0)),  # rad/s (circles look the same)
            "tone_hz": TONES_HZ[tones[i]],
            "speaking": speaking,
        })
    pan_speed = float(rng.choice([0.0, 1.0, 1.0]) * rng.uniform(0.4, 1.0) * size)  # px/s at depth 1; a third static
    pan_dir = str(rng.choice(["left", "right"]))
    return {
        "size": size,
        "frames": frames,
        "fps": fps,
        "background": str(rng.choice(list(BACKGROUND_COLOURS))),
        "texture": str(rng.choice(TEXTURES)),
        "texture_phase": rng.uniform(0, 2 * np.pi, size=2).tolist(),
        "texture_period": float(rng.uniform(0.25, 0.45) * size),
        "pan": pan_speed * (-1.0 if pan_dir == "left" else 1.0),
        "shapes": shapes,
    }


def _caption(scene: dict[str, Any]) -> str:
    parts = [f"{'an' if s['colour'][0] in 'aeiou' else 'a'} {s['colour']} {s['shape']}" for s in scene["shapes"]]
    subject = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    verb = "moves" if len(parts) == 1 else "move"
    texture = "" if scene["texture"] == "plain" else f"{scene['texture']} "
    text = f"{subject} {verb} over a {texture}{scene['background']} background"
    if scene["pan"]:
        # The camera pans one way, the picture slides the other way.
        text += f", the camera pans {'right' if scene['pan'] > 0 else 'left'}"
    return text + "."


# ------------------------------------------------------------------------------------------------ rendering
def _bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at speed v from p0, reflected at lo and hi (a triangle wave)."""
    span = hi - lo
    x = (p0 - lo + v * t) % (2 * span)
    return lo + np.where(x > span, 2 * span - x, x)


def _is_speaking(stretches: list[list[float]], t: np.ndarray) -> np.ndarray:
    out = np.zeros(t.shape, dtype=bool)
    for a, b in stretches:
        out |= (t >= a) & (t < b)
    return out


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotate into the shape's frame
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = r * 0.85
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= r * 1.1
    # Equilateral triangle with circumradius r: three half-planes.
    inside = np.ones(dx.shape, dtype=bool)
    for k in range(3):
        a = theta + np.pi / 2 + k * 2 * np.pi / 3
        inside &= dx * np.cos(a) + dy * np.sin(a) >= -r / 2
    return inside


_REACH = {"circle": 1.0, "square": 0.85 * np.sqrt(2.0), "diamond": 1.1, "triangle": 1.0}


def _texture(scene: dict[str, Any], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Low-contrast, low-frequency brightness pattern in [-1, 1] (gentle enough that Canny does not fire on it)."""
    period = scene["texture_period"]
    px, py = scene["texture_phase"]
    k = 2 * np.pi / period
    kind = scene["texture"]
    if kind == "plain":
        return 0.4 * (ys / ys.max() - 0.5) if ys.max() > 0 else np.zeros_like(xs)
    if kind == "striped":
        return np.sin(k * (xs + 0.5 * ys) + px)
    if kind == "dotted":
        return np.sin(k * xs + px) * np.sin(k * ys + py)
    if kind == "wavy":
        return np.sin(k * ys + 0.5 * np.sin(k * xs + px) * period / 4 * k + py)
    return np.tanh(2 * np.sin(k * xs + px) * np.sin(k * ys + py))  # soft checkerboard


def _render(scene: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    size, frames, fps = scene["size"], scene["frames"], scene["fps"]
    ss = SUPERSAMPLE
    big = size * ss
    t = np.arange(frames) / fps
    grid = ((np.arange(big) + 0.5) / ss).astype(np.float32)  # pixel-centre coordinates in output pixels
    xs, ys = np.meshgrid(grid, grid)
    camera = np.stack([scene["pan"] * t, np.zeros_like(t)], axis=1).astype(np.float32)  # [F, 2] at depth 1
    shapes = scene["shapes"]
    n = len(shapes)
    depths = [BACKGROUND_DEPTH] + [s["depth"] for s in shapes]
    layer_offsets = np.stack([camera / d for d in depths]).astype(np.float32)  # [L, F, 2]

    # Shape centres in screen space: own motion (bouncing inside the frame), shifted by the camera's parallax.
    # The pan moves the picture opposite to the camera.
    centres = np.zeros((n, frames, 2), np.float32)
    speaking = np.zeros((n, frames), bool)
    radii = np.zeros((n, frames), np.float32)
    for i, s in enumerate(shapes):
        r = s["radius"]
        x = _bounce(s["start"][0], s["velocity"][0], t, r, size - r) - layer_offsets[i + 1, :, 0]
        y = _bounce(s["start"][1], s["velocity"][1], t, r, size - r) - layer_offsets[i + 1, :, 1]
        centres[i, :, 0], centres[i, :, 1] = x, y
        speaking[i] = _is_speaking(s["speaking"], t + 0.5 / fps)
        # Speaking shapes pulse at 4 Hz by ±12 % (a visible cue tied to the louder tone).
        radii[i] = r * (1 + 0.12 * speaking[i] * np.sin(2 * np.pi * 4 * t))

    base = np.array(BACKGROUND_COLOURS[scene["background"]], np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    labels = np.zeros((frames, size, size), np.int16)
    for f in range(frames):
        bx, by = layer_offsets[0, f]
        tex = _texture(scene, xs + bx, ys + by)
        image = base[None, None, :] * (1.0 + 0.35 * tex[..., None].astype(np.float32))  # [big, big, 3]
        label = np.zeros((big, big), np.int16)
        for i, s in enumerate(shapes):  # far to near
            inside = _inside(s["shape"], xs - centres[i, f, 0], ys - centres[i, f, 1], float(radii[i, f]),
                             s["spin"] * t[f])
            colour = np.array(SHAPE_COLOURS[s["colour"]], np.float32)
            # A slight top-to-bottom shading keeps shapes from being perfectly flat.
            shade = 1.0 - 0.12 * np.clip((ys - centres[i, f, 1]) / max(radii[i, f], 1.0), -1, 1)
            image[inside] = colour * shade[inside][:, None]
            label[inside] = i + 1
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)  # exact 2×2 means
        out[f] = np.clip(np.round(image), 0, 255).astype(np.uint8)
        onehot = (label[..., None] == np.arange(n + 1)).astype(np.float32)  # [big, big, n + 1]
        fractions = cv2.resize(onehot, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, n + 1)
        labels[f] = fractions.argmax(axis=-1)

    masks = np.stack([labels == i + 1 for i in range(n)]) if n else np.zeros((0, frames, size, size), bool)
    depth_of = np.array(depths, np.float32)
    depth = depth_of[labels]
    edges = np.zeros_like(labels, dtype=np.uint8)
    diff_x = labels[:, :, 1:] != labels[:, :, :-1]
    diff_y = labels[:, 1:, :] != labels[:, :-1, :]
    # Mark both pixels of a differing pair: the boundary is between them, so either side is within half a pixel.
    edges[:, :, 1:][diff_x] = 255
    edges[:, :, :-1][diff_x] = 255
    edges[:, 1:, :][diff_y] = 255
    edges[:, :-1, :][diff_y] = 255
    # Half-extent of each outline from its centre (any rotation): square corners, diamond tips, triangle vertices.
    reach = np.array([_REACH[s["shape"]] for s in shapes], np.float32).reshape(n, 1, 1)
    half = radii[..., None] * reach
    boxes = np.concatenate([centres - half, centres + half], axis=-1).astype(np.float32)
    truth = {
        "depth": depth,
        "labels": labels,
        "masks": masks,
        "edges": edges,
        "tracks": centres,
        "visible": masks.any(axis=(2, 3)) if n else np.zeros((0, frames), bool),
        "camera": camera,
        "layer_offsets": layer_offsets,
        "layer_depths": depth_of,
        "speaking": speaking,
        "boxes": boxes,
    }
    return out, truth


def _audio(scene: dict[str, Any], truth: dict[str, np.ndarray], sample_rate: int) -> np.ndarray:
    """Each shape's tone, louder while it speaks and while it moves fast, panned by its x position."""
    frames, fps, size = scene["frames"], scene["fps"], scene["size"]
    n_samples = round(frames / fps * sample_rate)
    t = np.arange(n_samples) / sample_rate
    frame_t = (np.arange(frames) + 0.5) / fps
    out = np.zeros((2, n_samples), np.float64)
    for i, s in enumerate(scene["shapes"]):
        track = truth["tracks"][i]
        speed = np.r_[0.0, np.linalg.norm(np.diff(track, axis=0), axis=1)] * fps / size  # frame widths per second
        amp_frames = 0.03 + 0.22 * truth["speaking"][i] + 0.05 * np.clip(speed, 0, 1)
        amp = np.interp(t, frame_t, amp_frames)
        pan = np.clip(np.interp(t, frame_t, track[:, 0] / size), 0.0, 1.0)
        # A tone with a soft second harmonic, so a tiny mel front end sees two lines per shape.
        phase = 2 * np.pi * s["tone_hz"] * t
        tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
        out[0] += amp * tone * np.sqrt(1 - pan)
        out[1] += amp * tone * np.sqrt(pan)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def make_clip(seed: int, size: int = 64, frames: int = 17, fps: float = 24.0, max_shapes: int = 3,
              sample_rate: int = SAMPLE_RATE) -> WorldClip:
    """One world clip, a pure function of its arguments."""
    if size < 16 or size % 8:
        raise BadUsage(f"world clip size {size}: use a multiple of 8, at least 16")
    if frames < 1:
        raise BadUsage("a world clip needs at least one frame")
    if not 1 <= max_shapes <= len(SHAPE_COLOURS):
        raise BadUsage(f"max_shapes must be 1..{len(SHAPE_COLOURS)}")
    rng = np.random.default_rng(seed)
    scene = _scene(rng, size, frames, fps, max_shapes)
    pixels, truth = _render(scene)
    return WorldClip(pixels, _audio(scene, truth, sample_rate), sample_rate, fps, _caption(scene), truth, scene)


def write_world_dataset(folder: str | Path, n: int, seed: int = 0, size: int = 64, frames: int = 17,
                        fps: float = 24.0, max_shapes: int = 3, truth: bool = False, start: int = 0) -> list[Path]:
    """Write clips `start` … `start + n − 1` as `world_XXXX.mp4` (video + stereo audio) with a `world_XXXX.txt`
    caption sidecar (what `avctl prepare` reads), and with `truth=True` a `world_XXXX.npz` of the exact ground truth
    plus `world_XXXX.json` of the scene. Clip k is make_clip(seed·100003 + k), so sets with different seeds do not
    overlap, and two processes writing disjoint ranges make the same folder as one. Returns the video paths."""
    from avctl.media import atomic_path, write_video

    if n < 1 or start < 0:
        raise BadUsage("write_world_dataset needs n ≥ 1 and start ≥ 0")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + n):
        clip = make_clip(clip_seed(seed, k), size, frames, fps, max_shapes)
        stem = out / f"world_{k:04d}"
        write_video(stem.with_suffix(".mp4"), clip.frames, fps, audio=clip.audio, sample_rate=clip.sample_rate)
        with atomic_path(stem.with_suffix(".txt")) as tmp:
            tmp.write_text(clip.caption + "\n", encoding="utf-8")
        if truth:
            with atomic_path(stem.with_suffix(".npz")) as tmp, tmp.open("wb") as f:
                np.savez_compressed(f, **clip.truth)
            with atomic_path(stem.with_suffix(".json")) as tmp:
                tmp.write_text(json.dumps(clip.scene, indent=1), encoding="utf-8")
        paths.append(stem.with_suffix(".mp4"))
    return paths


def clip_seed(seed: int, k: int) -> int:
    return seed * 100_003 + k
