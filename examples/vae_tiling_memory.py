"""Peak memory of the video VAE's encode and decode, tiled against untiled, each in a fresh subprocess (CPU: peak RSS
above the RSS just before the call; on CUDA: torch's peak allocated).

    python examples/vae_tiling_memory.py --model pocket --width 768 --height 512 --frames 49

Prints one JSON line per run and a JSON summary; docs/vae_tiling.md quotes its numbers."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    import torch

    from avctl.backbone import VaeTiling, load_backbone

    torch.set_num_threads(args.threads)
    tiling = VaeTiling(**json.loads(args.tiling)) if args.tiling else False
    backbone = load_backbone(args.model, components={"vae"}, vae_tiling=tiling)
    cuda = backbone.device.type == "cuda"
    f, h, w = backbone.latent_grid(args.frames, args.height, args.width)
    gen = torch.Generator().manual_seed(0)
    if args.what == "decode":
        data = torch.randn(1, backbone.vae.config.latent_channels, f, h, w, generator=gen)
        call = backbone.decode_video
    else:
        data = torch.randint(0, 256, (1, args.frames, args.height, args.width, 3), generator=gen, dtype=torch.uint8)
        call = backbone.encode_video
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    start = time.perf_counter()
    call(data)
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"what": args.what, "tiling": json.loads(args.tiling) if args.tiling else "off",
                      "peak_above_mib": round(peak - before, 1), "seconds": round(seconds, 2),
                      "device": str(backbone.device)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--what", default="decode,encode", help="decode, encode or both (comma-separated)")
    parser.add_argument("--tiles", default='{};{"tile_px":256,"stride_px":192,"tile_frames":16,"stride_frames":12}',
                        help="VaeTiling settings as JSON objects separated by ';' ({} = the defaults)")
    parser.add_argument("--child-tiling", dest="tiling", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    common = ["--model", args.model, "--width", str(args.width), "--height", str(args.height),
              "--frames", str(args.frames), "--threads", str(args.threads)]
    for what in args.what.split(","):
        for tiling in [None, *args.tiles.split(";")]:
            cmd = [sys.executable, __file__, "--child", "--what", what, *common]
            if tiling is not None:
                cmd += ["--child-tiling", tiling]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(json.dumps({"model": args.model, "size": f"{args.width}x{args.height}x{args.frames}", "runs": rows}))


if __name__ == "__main__":
    main()
