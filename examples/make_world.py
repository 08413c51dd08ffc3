"""Write procedural world clips (avctl.world) for the demo: mp4 with sound plus a caption sidecar per clip.

Usage: python examples/make_world.py OUT_DIR [--count N] [--start K] [--seed S] [--size 64] [--frames 17] [--truth]
       [--camera truck|mixed]
Clip k of seed S is the same on every machine; different seeds never share clips. --start K writes clips K … K+N−1,
so two processes with disjoint ranges fill one folder as a single run would.
"""

from __future__ import annotations

import argparse

from avctl.errors import BadUsage
from avctl.world import CAMERAS, write_world_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--start", type=int, default=0, help="index of the first clip (for writing in parallel)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--truth", action="store_true",
                        help="also write the exact ground truth (.npz, scene .json) and the true per-frame camera "
                             "(.camera.json, avctl's trajectory format: R, t, FOV per frame)")
    parser.add_argument("--camera", choices=CAMERAS, default="truck",
                        help="truck: sideways slides, a third static (the demo's clips); mixed: static, pan, tilt, "
                             "zoom, truck and combinations over a detailed background (for scoring camera estimates)")
    args = parser.parse_args()
    try:
        paths = write_world_dataset(args.out, args.count, seed=args.seed, size=args.size, frames=args.frames,
                                    truth=args.truth, start=args.start, camera=args.camera)
    except BadUsage as err:
        parser.error(str(err))  # one line and exit 2, no traceback
    print(f"{len(paths)} world clips in {args.out}")


if __name__ == "__main__":
    main()
