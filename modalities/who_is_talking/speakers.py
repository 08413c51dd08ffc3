"""Who speaks when: speaker assignment from the mixed track's voice activity and mouth motion, or from a
user's speakers file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avctl.audio import VAD_SAMPLE_RATE, VoiceActivity, require_audio, runs, voice_activity
from avctl.errors import BadInput, BadUsage


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` frames along the last axis (edges padded with the edge value)."""
    if width <= 1:
        return np.asarray(values, dtype=np.float64)
    kernel = np.ones(width) / width
    pad = (width // 2, width - 1 - width // 2)
    return np.stack([np.convolve(np.pad(row, pad, mode="edge"), kernel, mode="valid")
                     for row in np.atleast_2d(values)]).reshape(np.shape(values))


def talking_score(motion: np.ndarray, activity: np.ndarray, fps: float, smooth_s: float = 0.3) -> np.ndarray:
    """[N, F] how much each face's mouth moves: mouth motion averaged over `smooth_s` (mouths open and close at the
    syllable rate), minus the face's median level while nobody speaks, over its spread — so a face that always
    moves (a nodding listener) does not outscore one that moves when the voice does."""
    raw = np.asarray(motion, dtype=np.float64)
    smooth = _smooth(raw, max(1, round(smooth_s * fps)))
    quiet = ~np.asarray(activity, dtype=bool)
    out = np.zeros_like(smooth)
    for n, row in enumerate(smooth):
        base = float(np.median(row[quiet])) if quiet.any() else float(row.min(initial=0.0))
        # The spread of the raw motion: a fidgeting face's averaged motion hardly leaves its baseline, relative
        # to how much it jitters frame to frame.
        out[n] = (row - base) / (float(raw[n].std()) + 1e-6)
    return out


def assign_from_mix(activity: np.ndarray, motion: np.ndarray, fps: float, min_turn_s: float = 0.2) -> np.ndarray:
    """Who speaks when, from ONE mixed track (`activity` bool [F] from the VAD, `motion` [N, F] from
    `mouth_motion`). A face can speak only if its mouth motion correlates positively with the voice activity over
    the clip; in each active frame the candidate with the highest `talking_score` speaks; turns shorter than
    `min_turn_s` inside a speech run are given to the neighbouring turn. Returns speaking bool [N, F]. Overlapping
    speech goes to one face at a time, and an off-screen voice goes to whichever candidate moves most: give
    per-speaker tracks or segments when that matters."""
    faces, frames = motion.shape
    speaking = np.zeros((faces, frames), dtype=bool)
    active = np.asarray(activity, dtype=bool)
    candidates = [n for n in range(faces) if _correlation(motion[n], active) > 0]
    if not candidates or not active.any():
        return speaking
    score = talking_score(motion, active, fps)
    label = np.full(frames, -1)
    label[active] = np.array(candidates)[np.argmax(score[candidates][:, active], axis=0)]
    shortest = max(1, round(min_turn_s * fps))
    for start, end in runs(active):
        turns = _turns(label[start:end])
        changed = True
        while changed and len(turns) > 1:  # absorb the shortest too-short turn into its longer neighbour
            changed = False
            short = [i for i, (a, b, _) in enumerate(turns) if b - a < shortest]
            if short:
                i = min(short, key=lambda k: turns[k][1] - turns[k][0])
                left = turns[i - 1] if i > 0 else None
                right = turns[i + 1] if i + 1 < len(turns) else None
                pick = left if right is None or (left is not None and left[1] - left[0] >= right[1] - right[0]) \
                    else right
                turns[i] = (turns[i][0], turns[i][1], pick[2])
                turns = _merge_turns(turns)
                changed = True
        for a, b, who in turns:
            speaking[who, start + a : start + b] = True
    return speaking


def _turns(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, label) of each run of equal labels."""
    out: list[tuple[int, int, int]] = []
    for i, value in enumerate(labels):
        if out and out[-1][2] == value:
            out[-1] = (out[-1][0], i + 1, int(value))
        else:
            out.append((i, i + 1, int(value)))
    return out


def _merge_turns(turns: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for a, b, who in turns:
        if out and out[-1][2] == who:
            out[-1] = (out[-1][0], b, who)
        else:
            out.append((a, b, who))
    return out


def assign_from_speakers(activity: np.ndarray, motion: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Who speaks when, from per-speaker activity (bool [S, F], from per-speaker tracks or a segments file): each
    speaker is matched to one face by the correlation of that face's mouth motion with the speaker's activity
    (best pairs first, one face per speaker). Returns (speaking [N, F], {speaker index: face index}); a speaker
    left without a face (off screen) is dropped."""
    speakers, faces = activity.shape[0], motion.shape[0]
    speaking = np.zeros(motion.shape, dtype=bool)
    pairs = sorted(((_correlation(motion[n], activity[s]), s, n) for s in range(speakers) for n in range(faces)),
                   reverse=True)
    matched: dict[int, int] = {}
    for _, s, n in pairs:
        if s in matched or n in matched.values():
            continue
        matched[s] = n
        speaking[n] |= np.asarray(activity[s], dtype=bool)
    return speaking, matched


@dataclass
class SpeakerInfo:
    """What a user knows about one clip's speakers: time segments per speaker label and/or a per-speaker track."""

    segments: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # label → [(start_s, end_s)]
    tracks: dict[str, Path] = field(default_factory=dict)  # label → audio file of that speaker alone


def load_speakers(path: Path, default_clip: str | None = None) -> dict[str, SpeakerInfo]:
    """A speakers file (JSON Lines), one object per line, keyed by the clip's path relative to the prepare input
    (as `avctl prepare` names clips, e.g. "interviews/a.mp4"):
      {"clip": "a.mp4", "speaker": "A", "start": 0.0, "end": 1.5}   a segment, seconds from the clip's start
      {"clip": "a.mp4", "speaker": "B", "audio": "a.B.wav"}          that speaker's own track (path relative to
                                                                     the speakers file)
    Returns {clip: SpeakerInfo}. With `default_clip` (a per-clip sidecar file) "clip" may be left out."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: unreadable speakers file ({exc})") from exc
    out: dict[str, SpeakerInfo] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{where}: not valid JSON ({exc.msg})") from exc
        if isinstance(entry, dict) and default_clip is not None:
            entry.setdefault("clip", default_clip)
        if not isinstance(entry, dict) or not isinstance(entry.get("clip"), str) or "speaker" not in entry:
            raise BadInput(f"{where}: write {{\"clip\": ..., \"speaker\": ..., \"start\": s, \"end\": s}} or "
                           "{\"clip\": ..., \"speaker\": ..., \"audio\": PATH}")
        info = out.setdefault(entry["clip"], SpeakerInfo())
        label = str(entry["speaker"])
        if "audio" in entry:
            track = (path.parent / str(entry["audio"])).resolve()
            if not track.is_file():
                raise BadInput(f"{where}: {track} does not exist")
            info.tracks[label] = track
        else:
            try:
                start, end = float(entry["start"]), float(entry["end"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadInput(f"{where}: a segment needs numeric \"start\" and \"end\" (seconds)") from exc
            if end <= start or start < 0:
                raise BadInput(f"{where}: segment {start}..{end} s is empty or negative")
            info.segments.setdefault(label, []).append((start, end))
    return out


def speaker_activity(info: SpeakerInfo, fps: float, frames: int, vad: VoiceActivity | None = None,
                     offset_s: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Per-speaker activity bool [S, frames] from segments (a frame is active when its centre lies in a segment)
    and per-speaker tracks (voice activity on each track, `vad` required). `offset_s`: where the clip starts in
    the segments' timeline."""
    from avctl.media import read_audio

    labels = sorted(set(info.segments) | set(info.tracks))
    activity = np.zeros((len(labels), frames), dtype=bool)
    centres = (np.arange(frames) + 0.5) / fps + offset_s
    for i, label in enumerate(labels):
        for start, end in info.segments.get(label, []):
            activity[i] |= (centres >= start) & (centres < end)
        if label in info.tracks:
            if vad is None:
                raise BadUsage("per-speaker tracks need a voice-activity backend")
            wav = read_audio(info.tracks[label], VAD_SAMPLE_RATE, channels=1, max_seconds=offset_s + frames / fps)
            wav = require_audio(wav, f"speaker {label}'s track", str(info.tracks[label]))
            wav = wav[:, round(offset_s * VAD_SAMPLE_RATE):]
            activity[i] |= voice_activity(vad, wav, VAD_SAMPLE_RATE, fps, frames)
    return labels, activity
