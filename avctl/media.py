"""Video and audio in and out: PyAV (libav* in process) probes and decodes, the ffmpeg binary that imageio-ffmpeg
bundles encodes.

Reading: `probe` returns the streams' facts as a `MediaInfo`; `read_video` decodes to RGB uint8 at a constant
frame rate (a variable-rate source is resampled to its average rate, as ffmpeg's `-fps_mode cfr` would);
`read_audio` downmixes any channel layout and resamples to the rate asked (libswresample, as `ffmpeg -ac -ar`).
Writing: `write_video` makes H.264 mp4 (optionally lossless, for control media, and with AAC audio muxed in) and
`write_wav` 16-bit PCM; both write through `avctl.io` (a temp file renamed into place once the encoded file reads
back), so a reader never sees half a file. Buckets (`Bucket`) and `fit_to_bucket` are the ltx-trainer rule: resize
keeping aspect, centre-crop. docs/media.md says which library does which job and why.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import imageio_ffmpeg
import numpy as np

from avctl.errors import BadInput, BadUsage
from avctl.io import WriteError, atomic_media, atomic_path, temp_name


# ----------------------------------------------------------------------------------------------------------- probing
@dataclass(frozen=True)
class MediaInfo:
    """A media file's first video and first audio stream, as libavformat reads them."""

    has_video: bool
    has_audio: bool
    fps: float  # average frame rate; 0.0 when there is no video stream or no rate is known
    width: int  # coded size, before any rotation metadata (read_video's frames are rotated)
    height: int
    sample_rate: int  # 0 when there is no audio stream
    duration: float  # container duration in seconds; 0.0 when unknown
    rate: Fraction = Fraction(0)  # `fps` exactly (30000/1001 for NTSC)
    frames: int = 0  # video frame count the container states; 0 when it states none
    channels: int = 0  # audio channels; 0 when there is no audio stream
    video_codec: str = ""  # decoder names, e.g. "h264", "aac"; "" when the stream is absent
    audio_codec: str = ""


def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: is a folder, not a media file")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: empty file (0 bytes)")


def _reason(exc: Exception) -> str:
    """libav's own words for an error, without the file name PyAV appends (the caller names the file)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    # Cover art in audio files is a one-frame "video" stream; it is not a video.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not a video or audio file ffmpeg can read ({_reason(exc)})") from exc


def probe(path: str | Path) -> MediaInfo:
    """Stream facts of a media file. Raises BadInput when the file is missing, empty or not readable by libav."""
    path = Path(path)
    _check_file(path)
    with _open(path) as container:
        video = _video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise BadInput(f"{path}: not a video or audio file ffmpeg can read (no video or audio stream)")
        rate = Fraction(0)
        if video is not None:
            # The average rate is what `ffmpeg -i` prints as "fps"; the guessed one (its "tbr") is the fallback.
            found = video.average_rate or video.guessed_rate
            rate = fps_fraction(float(found)) if found else Fraction(0)
        duration = container.duration / av.time_base if container.duration else 0.0
        return MediaInfo(
            has_video=video is not None,
            has_audio=audio is not None,
            fps=float(rate),
            width=video.codec_context.width if video is not None else 0,
            height=video.codec_context.height if video is not None else 0,
            sample_rate=audio.codec_context.sample_rate if audio is not None else 0,
            duration=float(duration),
            rate=rate,
            frames=video.frames if video is not None else 0,
            channels=audio.codec_context.channels if audio is not None else 0,
            video_codec=video.codec_context.name if video is not None else "",
            audio_codec=audio.codec_context.name if audio is not None else "",
        )


def fps_fraction(fps: float) -> Fraction:
    """The exact rate behind a printed one: ffmpeg prints 30000/1001 as "29.97", which must not become 2997/100."""
    ntsc = fps * 1.001
    if abs(fps - round(fps)) > 0.005 and abs(ntsc - round(ntsc)) < 0.01:
        return Fraction(round(ntsc) * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


# ----------------------------------------------------------------------------------------------------------- reading
@dataclass
class VideoClip:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    fps: float

    @property
    def duration(self) -> float:
        """Seconds covered by the decoded frames."""
        return len(self.frames) / self.fps


def _decode(container: av.container.InputContainer, stream: av.stream.Stream, errors: list[str]) -> Iterator[Any]:
    """One stream's frames as the ffmpeg CLI delivers them: a packet the decoder rejects is skipped, and a demuxing
    error (a truncated or damaged file) ends the stream with what was read. The errors go to `errors`."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as exc:
            errors.append(_reason(exc))
            packet = None
        try:
            yield from packet.decode() if packet is not None else stream.codec_context.decode(None)  # None: flush
        except (av.FFmpegError, OSError) as exc:
            errors.append(_reason(exc))
        if packet is None:
            return


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    """[H, W, 3] uint8 RGB, turned upright by the frame's rotation metadata (as ffmpeg's autorotate does)."""
    image = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    return np.rot90(image, turns) if turns else image


def _constant_rate(frames: Iterable[av.VideoFrame], rate: Fraction, limit: int | None) -> list[np.ndarray]:
    """Decoded frames on a constant-rate grid from the first frame's time: slot k shows the source frame nearest
    to k/rate; a gap repeats the frame before it, a crowded slot keeps its nearest frame (ffmpeg's `-fps_mode cfr`).
    A constant-rate source passes through one frame per slot."""
    out: list[np.ndarray] = []
    held: av.VideoFrame | None = None
    held_slot, held_error = 0, 0.0
    start: float | None = None
    previous = 0.0
    for frame in frames:
        time = frame.time if frame.time is not None else previous + 1 / float(rate)  # no pts: the next slot
        previous = time
        start = time if start is None else start
        position = (time - start) * float(rate)
        slot = max(round(position), len(out))  # a frame never goes back before what was already given out
        if held is not None and slot > held_slot:
            out.extend([_rgb(held)] * (slot - len(out)))  # the held frame fills its slot and any gap after it
            held = None
            if limit is not None and len(out) >= limit:
                return out[:limit]
        error = abs(position - slot)
        if held is None or error < held_error:
            held, held_slot, held_error = frame, slot, error
    if held is not None:
        out.extend([_rgb(held)] * (held_slot + 1 - len(out)))
    return out[:limit] if limit is not None else out


def read_video(path: str | Path, max_frames: int | None = None) -> VideoClip:
    """Decode a video to RGB frames at its (average) frame rate, resampled to a constant rate when the source has a
    variable one. `max_frames` stops decoding early."""
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise BadUsage(f"max_frames must be at least 1, got {max_frames}")
    info = probe(path)
    if not info.has_video:
        raise BadInput(f"{path}: has no video stream")
    if info.fps <= 0:
        raise BadInput(f"{path}: ffmpeg reports no frame rate for the video stream; re-encode it with a fixed rate")
    errors: list[str] = []
    with _open(path) as container:
        stream = _video_stream(container)
        assert stream is not None  # probe found it
        stream.thread_type = "AUTO"  # frame and slice threads; the decoder picks what the codec allows
        frames = _constant_rate(_decode(container, stream, errors), info.rate, max_frames)
    if not frames:
        raise BadInput(f"{path}: could not decode the video ({errors[0]})" if errors else
                       f"{path}: no decodable video frames")
    return VideoClip(frames=np.stack(frames), fps=float(info.rate))  # [F, H, W, 3]


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def read_audio(
    path: str | Path, sample_rate: int, channels: int = 2, max_seconds: float | None = None
) -> np.ndarray | None:
    """The first audio stream as float32 [channels, samples] in [-1, 1], downmixed/upmixed and resampled by
    libswresample; None when the file has no audio stream. `max_seconds` stops decoding early."""
    path = Path(path)
    if not probe(path).has_audio:
        return None
    limit = None if max_seconds is None else max(0, round(max_seconds * sample_rate))
    resampler = av.AudioResampler(format="fltp", layout=_layout(channels), rate=sample_rate)
    chunks: list[np.ndarray] = []

    def take(frame: av.AudioFrame | None) -> int:
        got = [out.to_ndarray() for out in resampler.resample(frame)]  # [channels, samples] each (planar)
        chunks.extend(got)
        return sum(chunk.shape[1] for chunk in got)

    errors: list[str] = []
    have, excess = 0, 0.0
    with _open(path) as container:
        stream = container.streams.audio[0]
        frame = None
        for frame in _decode(container, stream, errors):
            have += take(frame)
            if limit is not None and have >= limit:
                break
        else:
            take(None)  # the resampler's buffered tail
            if frame is not None and frame.time is not None and stream.duration:
                # The last AAC frame is whole, but the container says where the sound ends (its padding is cut).
                end = float(((stream.start_time or 0) + stream.duration) * stream.time_base)
                excess = max(0.0, frame.time + frame.samples / frame.sample_rate - end)
    if not chunks and errors:
        raise BadInput(f"{path}: could not decode the audio ({errors[0]})")
    audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    if limit is not None:
        audio = audio[:, :limit]
    elif excess:
        audio = audio[:, : audio.shape[1] - round(excess * sample_rate)]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------- writing
def _check_video(path: Path, audio: bool) -> Callable[[Path], None]:
    """A check for `atomic_media`: the encoded file must open in ffmpeg with a video (and audio) stream; a full
    disk or a killed encoder leaves an mp4 without its index, which fails here."""

    def check(tmp: Path) -> None:
        try:
            info = probe(tmp)
        except BadInput as exc:
            raise WriteError(f"cannot write {path}: the encoded file is incomplete ({exc}); check free disk space "
                             "and rerun the same command") from exc
        if not info.has_video or (audio and not info.has_audio):
            raise WriteError(f"cannot write {path}: the encoded file lacks its "
                             f"{'video' if not info.has_video else 'audio'} stream; rerun the same command")

    return check


def _audio_to_int16(audio: np.ndarray, where: Path) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] > 16:
        raise BadInput(f"{where}: audio must be [channels, samples], got shape {tuple(audio.shape)}")
    pcm = np.round(np.clip(audio.astype(np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    return np.ascontiguousarray(pcm.T)  # [samples, channels] interleaved


def _write_wav_file(target: Path, audio: np.ndarray, sample_rate: int, where: Path) -> None:
    pcm = _audio_to_int16(audio, where)
    with open(target, "wb") as handle, wave.open(handle, "wb") as wav:
        wav.setnchannels(pcm.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav from float audio [channels, samples] (or [samples] mono), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _write_wav_file(tmp, audio, sample_rate, path)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    lossless: bool = False,
) -> None:
    """H.264 mp4 from RGB uint8 frames [F, H, W, 3], with optional AAC audio [channels, samples]. `lossless=True`
    encodes with `-qp 0` in yuv444p so control media stay what the extractor made. Written atomically."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise BadInput(f"{path}: frames must be a non-empty uint8 array [F, H, W, 3], got {frames.dtype} "
                       f"{tuple(frames.shape)}")
    height, width = frames.shape[1:3]
    if not lossless and (width % 2 or height % 2):
        raise BadInput(f"{path}: H.264 yuv420p needs an even width and height, got {width}x{height}; "
                       "resize or crop to even sizes first")
    if fps <= 0:
        raise BadInput(f"{path}: fps must be positive, got {fps}")
    if audio is not None and not sample_rate:
        raise BadInput(f"{path}: audio given without a sample rate")

    if lossless:
        pix_fmt, quality_params = "yuv444p", ["-qp", "0"]
    else:
        pix_fmt, quality_params = "yuv420p", ["-crf", "17"]
    output_params = [*quality_params, "-preset", "medium", "-movflags", "+faststart"]

    with atomic_media(path, _check_video(path, audio is not None)) as tmp_video:
        audio_path = None
        tmp_wav = temp_name(path, ".wav")
        try:
            if audio is not None:
                _write_wav_file(tmp_wav, audio, int(sample_rate or 0), path)
                audio_path = str(tmp_wav)
                output_params += ["-b:a", "192k"]
            _encode(tmp_video, frames, fps, pix_fmt, output_params, audio_path, path)
        finally:
            tmp_wav.unlink(missing_ok=True)


def _encode(
    target: Path, frames: np.ndarray, fps: float, pix_fmt: str, output_params: list[str], audio_path: str | None,
    where: Path,
) -> None:
    """Pipe RGB frames into ffmpeg (the command line imageio-ffmpeg's `write_frames` builds) and check its exit
    status, which imageio-ffmpeg does not: a full disk makes ffmpeg fail at the trailer, after every frame went in."""
    height, width = frames.shape[1:3]
    cmd = [_ffmpeg(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}", "-pix_fmt", "rgb24",
           "-r", str(fps_fraction(fps)), "-i", "-", *(["-i", audio_path] if audio_path else ["-an"]),
           "-vcodec", "libx264", "-pix_fmt", pix_fmt, "-v", "error", *output_params]
    if audio_path:
        cmd += ["-acodec", "aac", "-map", "0:v:0", "-map", "1:a:0"]
    cmd.append(str(target))
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: ffmpeg never blocks on its own messages
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        assert proc.stdin is not None
        try:
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit status and message say why
        except BaseException:
            proc.kill()
            raise
        finally:
            code = proc.wait()
        if code != 0:
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            raise WriteError(f"cannot write {where}: ffmpeg failed ({lines[-1] if lines else f'exit status {code}'}); "
                             "check free disk space and rerun the same command")


# ----------------------------------------------------------------------------------------------------------- buckets
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_frames_or_image(path: str | Path, what: str, max_frames: int | None = None) -> np.ndarray:
    """An image file as one RGB frame [1, H, W, 3] uint8, or a video's frames [F, H, W, 3]; `what` names the role
    in the error message (e.g. "--image", "mask")."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: {what} not found")
    if not is_image(path):
        return read_video(path, max_frames=max_frames).frames
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise BadInput(f"{path}: {what} is not a readable image; give an 8-bit PNG or JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[None]


def fit_to_bucket(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize [F, H, W, 3] frames keeping their aspect so they cover width×height, then centre-crop to exactly
    [F, height, width, 3]. INTER_AREA when shrinking (no aliasing), INTER_CUBIC when enlarging."""
    src_h, src_w = frames.shape[1:3]
    scale = max(width / src_w, height / src_h)
    new_w = max(width, round(src_w * scale))
    new_h = max(height, round(src_h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = np.empty((len(frames), height, width, frames.shape[3]), dtype=frames.dtype)  # [F, height, width, 3]
    for i, frame in enumerate(frames):
        resized = frame if (new_w, new_h) == (src_w, src_h) else cv2.resize(frame, (new_w, new_h),
                                                                          interpolation=interpolation)
        out[i] = resized[top : top + height, left : left + width]
    return out


def _nearest_multiples(value: int, step: int) -> str:
    below = max(step, value // step * step)
    above = max(step, math.ceil(value / step) * step)
    return str(below) if below == above else f"{below} or {above}"


def _nearest_frames(value: int, temporal: int) -> tuple[int, int]:
    below = max(1, (value - 1) // temporal * temporal + 1)
    above = math.ceil((value - 1) / temporal) * temporal + 1 if value > 1 else 1
    return below, above


@dataclass(frozen=True)
class Bucket:
    """One training resolution: width × height pixels, `frames` frames ("WxHxF", as ltx-trainer writes it)."""

    width: int
    height: int
    frames: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @classmethod
    def parse(cls, text: str) -> Bucket:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
        if not match:
            raise BadUsage(f"bucket {text!r} is not WIDTHxHEIGHTxFRAMES (e.g. 768x448x89)")
        width, height, frames = (int(g) for g in match.groups())
        if min(width, height, frames) < 1:
            raise BadUsage(f"bucket {text!r}: width, height and frames must all be at least 1")
        return cls(width, height, frames)

    def check(self, spatial: int = 32, temporal: int = 8, downscale: int = 1) -> Bucket:
        """Width and height must be multiples of spatial·downscale (so the downscaled reference is whole latent
        tokens), frames ≡ 1 mod temporal (the causal VAE). Returns self; BadUsage names what to change."""
        step = spatial * downscale
        problems = []
        if self.width % step or self.width < step:
            problems.append(f"width {self.width} is not a multiple of {step} (nearest: "
                            f"{_nearest_multiples(self.width, step)})")
        if self.height % step or self.height < step:
            problems.append(f"height {self.height} is not a multiple of {step} (nearest: "
                            f"{_nearest_multiples(self.height, step)})")
        if self.frames % temporal != 1 % temporal:
            below, above = _nearest_frames(self.frames, temporal)
            problems.append(f"frames {self.frames} is not {temporal}k+1 (nearest: {below} or {above})")
        if problems:
            why = f"{spatial} × reference downscale {downscale}" if downscale > 1 else f"{spatial}"
            raise BadUsage(f"bucket {self}: " + "; ".join(problems) + f" (sizes must be multiples of {why})")
        return self

    def reference_size(self, downscale: int) -> tuple[int, int]:
        """(height, width) of the reference canvas at `downscale`."""
        return self.height // downscale, self.width // downscale
