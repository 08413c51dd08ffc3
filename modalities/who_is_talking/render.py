"""The who-is-talking reference: face boxes on black, coloured by speaker while speaking, grey when silent; and
reading them back from a control."""

from __future__ import annotations

import cv2
import numpy as np

GREY = (128, 128, 128)  # a silent speaker's box
# Speaker colours in order of appearance (left to right); more speakers get golden-ratio hues.
PALETTE = ((255, 0, 0), (0, 255, 0), (0, 96, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 128, 0),
           (160, 0, 255))
COLOUR_SATURATION = 80  # max − min channel above this: a coloured (speaking) box pixel, not grey


def speaker_colour(index: int) -> tuple[int, int, int]:
    """The colour of speaker `index` (0 = the leftmost face): the fixed palette, then golden-ratio hues (distinct
    for at least the first 80 speakers)."""
    if index < len(PALETTE):
        return PALETTE[index]
    # Beyond the palette: golden-ratio hues at a lower brightness than the palette's (so none repeats it),
    # dimmer again every 24 colours; always fully saturated, so never grey.
    extra = index - len(PALETTE)
    hue = int((extra * 0.618033988749895 % 1.0) * 180)
    value = 220 - 40 * ((extra // 24) % 3)
    rgb = cv2.cvtColor(np.array([[[hue, 255, value]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def render_who_is_talking(boxes: np.ndarray, speaking: np.ndarray, frame_size: tuple[int, int],
                          reference_size: tuple[int, int]) -> np.ndarray:
    """The who-is-talking reference: black frames [F, h, w, 3] with each face's box filled in its speaker colour
    while that face speaks and grey while it is silent. `boxes` [N, F, 4] are in pixels of `frame_size` (H, W)
    and are scaled to `reference_size` (h, w). Silent boxes are drawn first so a speaker stays visible where boxes
    overlap."""
    faces, frames = boxes.shape[:2]
    height, width = reference_size
    sy, sx = height / frame_size[0], width / frame_size[1]
    out = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        order = sorted(range(faces), key=lambda n: bool(speaking[n, t]))
        for n in order:
            box = boxes[n, t]
            if np.isnan(box).any():
                continue
            x0, x1 = round(box[0] * sx), round(box[2] * sx)
            y0, y1 = round(box[1] * sy), round(box[3] * sy)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
            if x1 > x0 and y1 > y0:
                out[t, y0:y1, x0:x1] = speaker_colour(n) if speaking[n, t] else GREY
    return out


def coloured_fraction(frames: np.ndarray) -> np.ndarray:
    """[F] fraction of pixels in each frame that are clearly coloured (a speaking box), not black or grey."""
    frames = np.asarray(frames)
    spread = frames.max(axis=-1).astype(np.int16) - frames.min(axis=-1).astype(np.int16)
    return (spread > COLOUR_SATURATION).mean(axis=(1, 2))


def speaking_in_control(frames: np.ndarray, min_fraction: float = 0.001) -> np.ndarray:
    """bool [F]: whether any box in a who-is-talking control is coloured (someone speaks) in each frame."""
    return coloured_fraction(frames) >= min_fraction


def control_boxes(frame: np.ndarray, min_area: int = 4) -> list[tuple[tuple[int, int, int, int], bool]]:
    """The boxes drawn in one who-is-talking control frame: [((x0, y0, x1, y1), speaking)], from the connected
    regions of non-black pixels; a region is speaking when its pixels are coloured, not grey."""
    drawn = (np.asarray(frame).max(axis=-1) > 40).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(drawn)
    spread = frame.max(axis=-1).astype(np.int16) - frame.min(axis=-1).astype(np.int16)
    out = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area >= min_area:
            out.append(((x, y, x + w, y + h), bool(np.median(spread[labels == k]) > COLOUR_SATURATION)))
    return out
