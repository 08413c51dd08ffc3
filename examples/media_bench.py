"""Media probing and decoding: PyAV (avctl.media) against the ffmpeg-subprocess path avctl used before.

    python examples/media_bench.py [--repeats 5] [--keep FOLDER]

Writes a 1280×720 5 s clip with stereo AAC and three small ones through `avctl.media.write_video`, then times, per
clip, probing, decoding every video frame to RGB and decoding the audio to 16 kHz stereo, both ways, round-robin
(each repetition runs every case once, so load from other work hits both alike). Prints the median seconds and the
ratio subprocess / PyAV (above 1: PyAV is faster), and checks both paths give the same frames and samples.
The subprocess path is rebuilt here as it was: `ffmpeg -i` stderr read by regex, `imageio_ffmpeg.read_frames`,
`ffmpeg -f f32le` into a pipe. Not a test; docs/media.md quotes its numbers.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from avctl import media


# -------------------------------------------------------------------------------- the earlier path, as it was
def sub_probe(path: Path) -> tuple[float, int, int]:
    """fps, width, height from `ffmpeg -i`'s stderr (no cache: each call starts ffmpeg)."""
    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                         capture_output=True, text=True, errors="replace").stderr
    line = next(m.group(1) for m in map(re.compile(r"^\s*Stream #\d+:\d+.*?: Video: (.*)$").match, err.splitlines())
                if m)
    fps = float(re.search(r" ([0-9]+(?:\.[0-9]+)?) fps", line).group(1))  # type: ignore[union-attr]
    size = re.search(r" ([0-9]{1,5})x([0-9]{1,5})[, \[]", line + " ")
    assert size is not None
    return fps, int(size.group(1)), int(size.group(2))


def sub_video(path: Path) -> np.ndarray:
    fps, _, _ = sub_probe(path)
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-fps_mode", "cfr", "-r",
                                                                  str(media.fps_fraction(fps)), "-an", "-sn"])
    width, height = next(reader)["size"]
    chunks = list(reader)
    return np.frombuffer(b"".join(chunks), np.uint8).reshape(len(chunks), height, width, 3).copy()


def sub_audio(path: Path, rate: int = 16_000, channels: int = 2) -> np.ndarray:
    sub_probe(path)  # the earlier read_audio probed first (to return None without audio)
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
                          "-map", "0:a:0", "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar",
                          str(rate), "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, "<f4").reshape(-1, channels).T.copy()


# ------------------------------------------------------------------------------------------------------- clips
def make_clips(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)

    def clip(name: str, width: int, height: int, seconds: float, fps: float = 24.0) -> Path:
        count = round(seconds * fps)
        y, x = np.mgrid[:height, :width]
        frames = np.empty((count, height, width, 3), np.uint8)
        for i in range(count):  # moving gradients plus mild noise: an encoder cannot make it trivially small
            frames[i, ..., 0] = (x + 4 * i) % 256
            frames[i, ..., 1] = (y + 2 * i) % 256
            frames[i, ..., 2] = rng.integers(96, 160, (height, width), dtype=np.uint8)
        t = np.arange(round(seconds * 48_000)) / 48_000
        audio = 0.3 * np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
        path = folder / f"{name}.mp4"
        media.write_video(path, frames, fps, audio=audio, sample_rate=48_000)
        return path

    return {
        "1280x720 5s": clip("hd", 1280, 720, 5.0),
        "320x240 2s": clip("small_a", 320, 240, 2.0),
        "256x256 1s": clip("small_b", 256, 256, 1.0, fps=25.0),
        "160x120 3s": clip("small_c", 160, 120, 3.0, fps=12.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the clips here and keep them (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clips = make_clips(folder)
        cases: list[tuple[str, str, Callable[[], object], Callable[[], object]]] = []
        for name, path in clips.items():
            cases += [
                (name, "probe", lambda p=path: sub_probe(p), lambda p=path: media.probe(p)),
                (name, "video", lambda p=path: sub_video(p), lambda p=path: media.read_video(p).frames),
                (name, "audio 16k", lambda p=path: sub_audio(p), lambda p=path: media.read_audio(p, 16_000, 2)),
            ]
        for name, job, old, new in cases:  # the same output both ways (and a warm-up)
            if job == "probe":
                fps, width, height = old()
                info = new()
                assert (fps, width, height) == (info.fps, info.width, info.height), (name, info)  # type: ignore[attr-defined]
                continue
            a, b = np.asarray(old(), np.float32), np.asarray(new(), np.float32)
            assert a.shape == b.shape, (name, job, a.shape, b.shape)
            gap = float(np.abs(a - b).max())
            print(f"{name} {job}: {a.shape}, largest difference {gap:.4g}")
            assert gap <= (0 if job == "video" else 0.01)  # audio: the two resampler set-ups differ slightly
        times: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.repeats):
            for name, job, old, new in cases:
                for way, fn in (("subprocess", old), ("pyav", new)):
                    start = time.perf_counter()
                    fn()
                    times.setdefault((name, job, way), []).append(time.perf_counter() - start)
        print(f"median of {args.repeats}, seconds; ratio = subprocess / PyAV")
        print(f"{'clip':<13} {'job':<10} {'subprocess':>10} {'pyav':>8} {'ratio':>6}")
        for name, job, _, _ in cases:
            old_s = statistics.median(times[(name, job, "subprocess")])
            new_s = statistics.median(times[(name, job, "pyav")])
            print(f"{name:<13} {job:<10} {old_s:>10.4f} {new_s:>8.4f} {old_s / new_s:>6.1f}")


if __name__ == "__main__":
    main()
