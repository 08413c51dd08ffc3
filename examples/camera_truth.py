"""Camera estimation against the truth: the default estimator (avctl.camera.estimate_trajectory) on world clips
with camera="mixed" and on synthetic pans of a real photograph, scored with avctl.camera.score_camera.

    OMP_NUM_THREADS=1 python examples/camera_truth.py [--clips 50] [--seed 7] [--size 64] [--depth] [--json OUT]

Each world clip's estimate gets the true FOV of frame 0 (the world's lens at rest), and with --depth also frame 0's
true z-depth (what camera-image's extractor passes: PnP then competes with rotation + zoom). The photo is
matplotlib's sample `grace_hopper.jpg`, viewed at 96×128 through `rotate_image` (exact homographies: a pan of a
photo at infinity). Prints one line per clip and a summary; docs/camera_truth.md holds a run's numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from avctl import camera as C
from avctl.errors import BadInput
from avctl.world import clip_seed, make_clip

FPS, FRAMES = 24.0, 17
PHOTO_MOVES = [  # (yaw °/s, pitch °/s, zoom rate) of the photo's synthetic camera
    (15, 0, 0), (-25, 0, 0), (8, 0, 0), (0, 12, 0), (0, -20, 0), (10, -10, 0), (-18, 14, 0), (0, 0, 0.5),
    (20, 0, -0.4), (-12, 6, 0.3), (0, 0, 0), (30, 0, 0),
]


def photo() -> np.ndarray:
    from matplotlib import cbook

    image = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (320, 375), interpolation=cv2.INTER_AREA)


def photo_trajectory(yaw: float, pitch: float, zoom: float, fov: float = C.DEFAULT_FOV) -> C.Trajectory:
    t = np.arange(FRAMES) / FPS
    rotations = np.stack([C.rot_y(yaw * ti) @ C.rot_x(-pitch * ti) for ti in t])
    fovs = np.degrees(2 * np.arctan(np.tan(np.radians(fov) / 2) * np.exp(-zoom * t)))
    return C.Trajectory(rotations, np.zeros((FRAMES, 3)), fovs, name=f"photo yaw {yaw} pitch {pitch} zoom {zoom}")


def score(frames: np.ndarray, truth: C.Trajectory, depth: np.ndarray | None) -> dict | None:
    try:
        estimate = C.estimate_trajectory(frames, depth, float(truth.fov[0]))
    except BadInput as exc:
        return {"failed": str(exc), "pan_recovered": False}
    return {**C.score_camera(estimate, truth, FPS), "model": estimate.name}


def summary(rows: list[dict], label: str) -> dict:
    done = [r for r in rows if "failed" not in r]
    rot = np.array([r["rotation_error_deg"] for r in done])
    fov = np.array([r["fov_error_deg"] for r in done if r["fov_error_deg"] is not None])
    trans = np.array([r["translation_direction_error_deg"] for r in done
                      if r["translation_direction_error_deg"] is not None])
    out = {
        "set": label,
        "clips": len(rows),
        "pan_recovered": sum(r["pan_recovered"] for r in rows),
        "failed": len(rows) - len(done),
        "rotation_error_deg_median": float(np.median(rot)) if len(rot) else None,
        "rotation_error_deg_p90": float(np.percentile(rot, 90)) if len(rot) else None,
        "fov_error_deg_median": float(np.median(fov)) if len(fov) else None,
        "fov_error_deg_max": float(fov.max()) if len(fov) else None,
        "translation_direction_error_deg_median": float(np.median(trans)) if len(trans) else None,
    }
    out["rate"] = out["pan_recovered"] / max(1, out["clips"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--depth", action="store_true", help="give the estimator frame 0's true depth (PnP competes)")
    parser.add_argument("--json", type=Path, help="write the per-clip scores and the summary here")
    args = parser.parse_args()
    rows, started = [], time.perf_counter()
    for k in range(args.clips):
        clip = make_clip(clip_seed(args.seed, k), args.size, FRAMES, FPS, camera="mixed")
        truth = clip.trajectory()
        row = score(clip.frames, truth, clip.truth["depth"][0] if args.depth else None)
        row.update(clip=k, move=clip.scene["move"])
        rows.append(row)
        print(k, row["move"], row.get("model", row.get("failed")), "recovered" if row["pan_recovered"] else "MISSED",
              "true", np.round(row.get("true_pan_deg_s", []), 1).tolist(),
              "est", np.round(row.get("estimated_pan_deg_s", []), 1).tolist(), flush=True)
    seconds = (time.perf_counter() - started) / max(1, args.clips)
    image = photo()
    photos = []
    for yaw, pitch, zoom in PHOTO_MOVES:
        truth = photo_trajectory(yaw, pitch, zoom)
        row = score(C.rotate_image(image, truth, (96, 128)), truth, None)
        row.update(move=f"yaw {yaw} pitch {pitch} zoom {zoom}")
        photos.append(row)
        print("photo", row["move"], "recovered" if row["pan_recovered"] else "MISSED",
              np.round(row.get("estimated_pan_deg_s", []), 2).tolist(), flush=True)
    moves = sorted({r["move"] for r in rows})
    report = {
        "world": summary(rows, "all world clips"),
        "world_rotation_only": summary([r for r in rows if r["move"] != "truck"], "world clips but trucks"),
        "by_move": {m: summary([r for r in rows if r["move"] == m], m) for m in moves},
        "photo": summary(photos, "photo pans"),
        "seconds_per_world_clip": seconds,
        "depth_given": args.depth,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"report": report, "world": rows, "photo": photos}, indent=1, default=float))


if __name__ == "__main__":
    main()
