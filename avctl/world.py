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
    camera    [F, 2] float32      camera travel (x, y) in pixels at depth 1; `layer_offsets` [L, F, 2] per layer
    rotations [F, 3, 3], translations [F, 3], fov [F]   the true per-frame camera in avctl's trajectory convention
              (avctl.camera: OpenCV camera-to-world, centre in world depth units, vertical FOV in degrees);
              `WorldClip.trajectory()` wraps it as an avctl.camera.Trajectory
    speaking  [S, F] bool         who is speaking; `boxes` [S, F, 4] float32 (x0, y0, x1, y1) of each shape

The camera is a pinhole with a vertical (= horizontal, frames are square) FOV of WORLD_FOV° at rest, principal point
at the frame centre. `camera="truck"` (the default, the clips the demo and pocket were made from) slides it sideways
(a third of clips static). `camera="mixed"` draws a camera move per clip for evaluating camera estimation — static,
pan, tilt, pan + tilt, zoom, pan + zoom or truck — and adds a fine low-contrast detail texture to the background so
that a camera move over a "plain" background is observable. Under rotation and zoom every pixel's ray is cast onto
the background plane (exact perspective); shapes are drawn as flat figures at their centres' exact projections,
scaled by focal length / depth.

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
DETAIL_LEVELS = 6.0  # grey levels (std) of the mixed camera's background detail
WORLD_FOV = 50.0  # vertical (= horizontal) degrees at rest; avctl.camera.DEFAULT_FOV
CAMERAS = ("truck", "mixed")
# camera="mixed": each clip's move, drawn with these weights
MOVES = {"static": 2, "pan": 3, "tilt": 2, "pan-tilt": 3, "zoom": 2, "pan-zoom": 2, "truck": 2}

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

    def trajectory(self) -> Any:
        """The true camera as an avctl.camera.Trajectory (translations in world depth units)."""
        from avctl.camera import Trajectory

        return Trajectory(self.truth["rotations"], self.truth["translations"], self.truth["fov"],
                          name=f"world truth ({self.scene.get('move', 'truck')})", unit="depth")


# ------------------------------------------------------------------------------------------------ scene description
def _scene(rng: np.random.Generator, size: int, frames: int, fps: float, max_shapes: int,
           camera: str = "truck") -> dict[str, Any]:
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
    scene = {
        "size": size,
        "frames": frames,
        "fps": fps,
        "background": str(rng.choice(list(BACKGROUND_COLOURS))),
        "texture": str(rng.choice(TEXTURES)),
        "texture_phase": rng.uniform(0, 2 * np.pi, size=2).tolist(),
        "texture_period": float(rng.uniform(0.25, 0.45) * size),
        "pan": pan_speed * (-1.0 if pan_dir == "left" else 1.0),
        "shapes": shapes,
        "fov": WORLD_FOV,
    }
    if camera == "mixed":
        scene.update(_mixed_move(rng, size))
    return scene


def _mixed_move(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """A camera move for camera="mixed": angular velocity (yaw, pitch) in °/s (yaw > 0 turns right, pitch > 0 turns
    down, as avctl.camera's rot_y / rot_x(−pitch)), a zoom rate (tan(fov/2) scales by exp(zoom·t)), a sideways truck
    velocity in world units per second, and the background's detail texture (random gratings, 4–12 px)."""
    moves = list(MOVES)
    weights = np.array([MOVES[m] for m in moves], float)
    move = str(rng.choice(moves, p=weights / weights.sum()))
    speed = float(rng.uniform(8.0, 30.0))  # °/s: a slow to brisk handheld pan
    angle = {"pan": 0.0, "tilt": 0.5 * np.pi, "pan-zoom": 0.0}.get(move, float(rng.uniform(0, 2 * np.pi)))
    if move in ("pan", "tilt", "pan-zoom"):
        speed *= float(rng.choice([-1.0, 1.0]))
    yaw, pitch = (speed * np.cos(angle), speed * np.sin(angle)) if move in ("pan", "tilt", "pan-tilt",
                                                                           "pan-zoom") else (0.0, 0.0)
    zoom = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6)) if move in ("zoom", "pan-zoom") else 0.0
    direction = float(rng.uniform(0, 2 * np.pi))
    truck = float(rng.uniform(1.0, 3.0)) if move == "truck" else 0.0  # world units/s; the background is 10 away
    gratings = 12
    return {
        "pan": 0.0,
        "move": move,
        "yaw_rate": float(yaw),
        "pitch_rate": float(pitch),
        "zoom_rate": zoom,
        "truck": [truck * float(np.cos(direction)), truck * float(np.sin(direction))],
        "detail": {
            "angle": rng.uniform(0, np.pi, gratings).tolist(),
            "period": rng.uniform(4.0, 12.0, gratings).tolist(),
            "phase": rng.uniform(0, 2 * np.pi, gratings).tolist(),
        },
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
    elif abs(scene.get("yaw_rate", 0.0)) > abs(scene.get("pitch_rate", 0.0)):
        text += f", the camera pans {'right' if scene['yaw_rate'] > 0 else 'left'}"
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


def _project(point: np.ndarray, rotation: np.ndarray, centre3: np.ndarray, focal: float,
             centre: float) -> tuple[float, float, float]:
    """(u, v, z-depth) of a world point seen by the camera (R camera-to-world, centre3, focal, principal point)."""
    p = rotation.T @ (point - centre3)
    return focal * p[0] / p[2] + centre, focal * p[1] / p[2] + centre, float(p[2])


def _on_background(xs: np.ndarray, ys: np.ndarray, rotation: np.ndarray, centre3: np.ndarray, focal: float,
                   focal0: float, centre: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where pixel rays meet the background plane z = BACKGROUND_DEPTH: frame 0's pixel coordinates of the hit (the
    texture's coordinates) and the z-depth of the hit in the camera."""
    rays = np.stack([(xs - centre) / focal, (ys - centre) / focal, np.ones_like(xs)], axis=-1) @ rotation.T
    reach = (BACKGROUND_DEPTH - centre3[2]) / rays[..., 2]
    hit_x, hit_y = centre3[0] + reach * rays[..., 0], centre3[1] + reach * rays[..., 1]
    return focal0 * hit_x / BACKGROUND_DEPTH + centre, focal0 * hit_y / BACKGROUND_DEPTH + centre, reach


def _focal(fov: float, size: int) -> float:
    return (size / 2.0) / np.tan(np.radians(fov) / 2.0)


def _camera_path(scene: dict[str, Any], t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true cameras at times t: rotations [F, 3, 3] (camera-to-world), centres [F, 3] (world depth units, frame
    0's camera at the origin looking down +z), vertical FOV [F] in degrees."""
    fov0 = scene.get("fov", WORLD_FOV)
    f0 = _focal(fov0, scene["size"])
    count = len(t)
    if "move" not in scene:  # camera="truck": `pan` px/s at depth 1 is a sideways slide of pan / f0 units/s
        centres = np.stack([scene["pan"] * t / f0, np.zeros(count), np.zeros(count)], axis=1)
        return np.tile(np.eye(3), (count, 1, 1)), centres, np.full(count, fov0)
    rotations = np.empty((count, 3, 3))
    for i, ti in enumerate(t):
        yaw, pitch = np.radians(scene["yaw_rate"] * ti), np.radians(scene["pitch_rate"] * ti)
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        # a tripod head: yaw about the world's vertical, then pitch about the camera's x (positive turns down)
        rotations[i] = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp],
                                                                                     [0, sp, cp]])
    centres = np.stack([scene["truck"][0] * t, scene["truck"][1] * t, np.zeros(count)], axis=1)
    fov = np.degrees(2 * np.arctan(np.tan(np.radians(fov0) / 2) * np.exp(-scene["zoom_rate"] * t)))
    return rotations, centres, fov


def _detail(scene: dict[str, Any], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The mixed camera's background detail: a sum of fine gratings, about ±6 grey levels (below Canny's 100/200)."""
    out = np.zeros(xs.shape, np.float64)
    d = scene["detail"]
    for angle, period, phase in zip(d["angle"], d["period"], d["phase"], strict=True):
        out += np.cos(2 * np.pi / period * (xs * np.cos(angle) + ys * np.sin(angle)) + phase)
    return DETAIL_LEVELS * out / np.sqrt(len(d["angle"]) / 2)


def _render(scene: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    size, frames, fps = scene["size"], scene["frames"], scene["fps"]
    ss = SUPERSAMPLE
    big = size * ss
    t = np.arange(frames) / fps
    grid = ((np.arange(big) + 0.5) / ss).astype(np.float32)  # pixel-centre coordinates in output pixels
    xs, ys = np.meshgrid(grid, grid)
    shapes = scene["shapes"]
    n = len(shapes)
    depths = [BACKGROUND_DEPTH] + [s["depth"] for s in shapes]
    rotations, translations, fov = _camera_path(scene, t)
    mixed = "move" in scene
    centre, f0 = size / 2.0, _focal(fov[0], size)
    if mixed:
        camera = (f0 * translations[:, :2]).astype(np.float32)
        # where the point each layer showed at the frame centre at frame 0 is now, seen from the centre
        layer_offsets = np.stack([[centre - np.array(_project(np.array([0.0, 0.0, d]), rotations[f], translations[f],
                                                              _focal(fov[f], size), centre)[:2]) for f in range(frames)]
                                  for d in depths]).astype(np.float32)
    else:
        camera = np.stack([scene["pan"] * t, np.zeros_like(t)], axis=1).astype(np.float32)  # [F, 2] at depth 1
        layer_offsets = np.stack([camera / d for d in depths]).astype(np.float32)  # [L, F, 2]

    # Shape centres in screen space: own motion (bouncing inside frame 0's view of their depth plane), seen through
    # the camera. The pan moves the picture opposite to the camera.
    centres = np.zeros((n, frames, 2), np.float32)
    speaking = np.zeros((n, frames), bool)
    radii = np.zeros((n, frames), np.float32)
    shape_depth = np.zeros((n, frames), np.float32)
    for i, s in enumerate(shapes):
        r = s["radius"]
        x = _bounce(s["start"][0], s["velocity"][0], t, r, size - r)
        y = _bounce(s["start"][1], s["velocity"][1], t, r, size - r)
        scale = np.ones(frames)
        shape_depth[i] = s["depth"]
        if mixed:
            for f in range(frames):
                world = np.array([(x[f] - centre) * s["depth"] / f0, (y[f] - centre) * s["depth"] / f0, s["depth"]])
                u, v, z = _project(world, rotations[f], translations[f], _focal(fov[f], size), centre)
                x[f], y[f], shape_depth[i, f] = u, v, z
                scale[f] = _focal(fov[f], size) / f0 * s["depth"] / z
        else:
            x, y = x - layer_offsets[i + 1, :, 0], y - layer_offsets[i + 1, :, 1]
        centres[i, :, 0], centres[i, :, 1] = x, y
        speaking[i] = _is_speaking(s["speaking"], t + 0.5 / fps)
        # Speaking shapes pulse at 4 Hz by ±12 % (a visible cue tied to the louder tone).
        radii[i] = r * scale * (1 + 0.12 * speaking[i] * np.sin(2 * np.pi * 4 * t))

    base = np.array(BACKGROUND_COLOURS[scene["background"]], np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    labels = np.zeros((frames, size, size), np.int16)
    background_depth = np.full((frames, size, size), BACKGROUND_DEPTH, np.float32)
    for f in range(frames):
        if mixed:
            # each ray meets the background plane; the texture is painted on it in frame 0's pixel coordinates
            u, v, z = _on_background(xs, ys, rotations[f], translations[f], _focal(fov[f], size), f0, centre)
            tex = _texture(scene, u, v)
            image = base[None, None, :] * (1.0 + 0.35 * tex[..., None].astype(np.float32))
            image += _detail(scene, u, v)[..., None].astype(np.float32)
            background_depth[f] = cv2.resize(z.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        else:
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
    if mixed:  # z-depth in the camera: the rotated plane's depth varies across the frame; shapes at their centres'
        per_layer = np.concatenate([np.zeros((1, frames), np.float32), shape_depth])  # [L, F]
        depth = np.where(labels == 0, background_depth, per_layer[labels, np.arange(frames)[:, None, None]])
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
        "rotations": rotations.astype(np.float64),
        "translations": translations.astype(np.float64),
        "fov": fov.astype(np.float64),
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
              sample_rate: int = SAMPLE_RATE, camera: str = "truck") -> WorldClip:
    """One world clip, a pure function of its arguments. `camera`: "truck" (sideways slides, a third static) or
    "mixed" (static, pan, tilt, zoom, truck and combinations, over a detailed background; see the module doc)."""
    if camera not in CAMERAS:
        raise BadUsage(f"world camera {camera!r}: use one of {', '.join(CAMERAS)}")
    if size < 16 or size % 8:
        raise BadUsage(f"world clip size {size}: use a multiple of 8, at least 16")
    if frames < 1:
        raise BadUsage("a world clip needs at least one frame")
    if not 1 <= max_shapes <= len(SHAPE_COLOURS):
        raise BadUsage(f"max_shapes must be 1..{len(SHAPE_COLOURS)}")
    rng = np.random.default_rng(seed)
    scene = _scene(rng, size, frames, fps, max_shapes, camera)
    pixels, truth = _render(scene)
    return WorldClip(pixels, _audio(scene, truth, sample_rate), sample_rate, fps, _caption(scene), truth, scene)


def write_world_dataset(folder: str | Path, n: int, seed: int = 0, size: int = 64, frames: int = 17,
                        fps: float = 24.0, max_shapes: int = 3, truth: bool = False, start: int = 0,
                        camera: str = "truck") -> list[Path]:
    """Write clips `start` … `start + n − 1` as `world_XXXX.mp4` (video + stereo audio) with a `world_XXXX.txt`
    caption sidecar (what `avctl prepare` reads), and with `truth=True` a `world_XXXX.npz` of the exact ground truth,
    `world_XXXX.json` of the scene and `world_XXXX.camera.json`, the true per-frame camera as an avctl trajectory
    (the sidecar camera-image's extractor reads instead of estimating).
    Clip k is make_clip(seed·100003 + k), so sets with different seeds do not
    overlap, and two processes writing disjoint ranges make the same folder as one. Returns the video paths."""
    from avctl.camera import CAMERA_SUFFIX, save_trajectory
    from avctl.media import atomic_path, write_video

    if camera not in CAMERAS:
        raise BadUsage(f"world camera {camera!r}: use one of {', '.join(CAMERAS)}")
    if n < 1 or start < 0:
        raise BadUsage("write_world_dataset needs n ≥ 1 and start ≥ 0")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + n):
        clip = make_clip(clip_seed(seed, k), size, frames, fps, max_shapes, camera=camera)
        stem = out / f"world_{k:04d}"
        write_video(stem.with_suffix(".mp4"), clip.frames, fps, audio=clip.audio, sample_rate=clip.sample_rate)
        with atomic_path(stem.with_suffix(".txt")) as tmp:
            tmp.write_text(clip.caption + "\n", encoding="utf-8")
        if truth:
            with atomic_path(stem.with_suffix(".npz")) as tmp, tmp.open("wb") as f:
                np.savez_compressed(f, **clip.truth)
            with atomic_path(stem.with_suffix(".json")) as tmp:
                tmp.write_text(json.dumps(clip.scene, indent=1), encoding="utf-8")
            save_trajectory(clip.trajectory(), stem.with_name(stem.name + CAMERA_SUFFIX))
        paths.append(stem.with_suffix(".mp4"))
    return paths


def clip_seed(seed: int, k: int) -> int:
    return seed * 100_003 + k
