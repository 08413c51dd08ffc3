"""The modality plugin contract and its registry.

A modality is one declarative `Modality` object in its own module, registered under the Python entry-point group
`avctl.modalities` (see pyproject.toml), so a third-party package can add one without touching avctl. The core never
names a modality: it reads these fields.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from avctl.env import HOME
from avctl.errors import AvctlError, BadInput

ENTRY_POINT_GROUP = "avctl.modalities"

Stream = Literal["video", "audio"]
Context = Literal["noised", "clean", "absent"]
Layout = Literal["parallel", "side-by-side"]
Direction = Literal["target", "symmetric"]

#: LoRA target groups, in the paper's notation (Table 5): stream.SA / .CA (text) / .FF, and the audio-video
#: cross-attentions. `avctl.lora` maps each to diffusers module names.
TARGET_GROUPS = ("V.SA", "V.CA", "V.FF", "A.SA", "A.CA", "A.FF", "A→V", "V→A")
ALL_GROUPS = TARGET_GROUPS


@dataclass
class Clip:
    """What an extractor receives: one clip already cut and resized to the dataset bucket."""

    frames: np.ndarray  # [F, H, W, 3] uint8 RGB, bucket size
    fps: float
    key: str  # the clip's path relative to the input root; extractors seed randomness from it
    seed: int  # the run's --seed
    reference_size: tuple[int, int]  # (height, width) the reference must have (bucket size ÷ downscale)
    audio: np.ndarray | None = None  # [channels, samples] float32, when the source has audio
    sample_rate: int | None = None
    source: Path | None = None  # the source video file, for extractors that read per-clip sidecars next to it


@dataclass
class Control:
    """What an extractor returns: the reference media (and, for masked controls, the hole mask)."""

    frames: np.ndarray | None = None  # [F, h, w, 3] uint8 RGB at Clip.reference_size
    mask: np.ndarray | None = None  # [F, h, w] uint8, 255 = hole (inpaint); None when not applicable
    audio: np.ndarray | None = None  # [channels, samples] float32 reference audio
    sample_rate: int | None = None
    # What the control was made from, e.g. {"depth": "world truth"}: `prepare` counts each value in its summary.
    notes: dict[str, str] | None = None


@dataclass
class EvalInput:
    """What a modality's fidelity metric receives from `avctl eval`: one generated video and what it was made from."""

    modality: Modality
    control: Path  # the control file generation used
    video: Path  # the generated video
    output: Any  # avctl.media.VideoClip: `video`, already read
    mask: Path | None = None  # a hole mask (modalities with `masked`), as `avctl prepare` writes mask/<clip>.mp4
    mask_missing: str | None = None  # why there is no mask, when the caller knows
    source: Path | None = None  # the clip the control was extracted from (`generate --from-video`, `eval --source`)
    source_missing: str | None = None  # why there is no source clip, when the caller knows
    weights: Path | None = None  # extractor weights, as `avctl prepare --weights`, for metrics that re-estimate
    camera: str | None = None  # the camera PRESET[@STRENGTH] or trajectory .json generated with
    fov: float = 50.0  # vertical FOV of frame 0 for a camera preset


@dataclass
class FidelityResult:
    """What a modality's fidelity metric returns; `avctl eval` merges it into its report."""

    metrics: dict[str, Any] = field(default_factory=dict)  # name → value
    missing: dict[str, str] = field(default_factory=dict)  # name → why it is not available
    compared: dict[str, Any] = field(default_factory=dict)  # what was compared (frame counts, sizes, models)
    # name → avctl.skill.Fidelity: the metrics that also get <name>_chance and <name>_skill against mismatched controls
    chance: dict[str, Any] = field(default_factory=dict)


#: A modality's offline control-fidelity metric (`Modality.fidelity`).
FidelityMetric = Callable[[EvalInput], FidelityResult]


class Extractor(Protocol):
    """Turns a clip into its control. Model-backed extractors load once (`from_pretrained`) and are then called
    per clip; weightless ones are plain callables."""

    backend: str
    version: str

    def __call__(self, clip: Clip) -> Control: ...


def weight_places(weights: Path | str | None, backend: str) -> list[Path]:
    """Where a model-backed extractor looks for its weights, in order: the `--weights` folder itself, then
    `<weights>/<backend>`, then `$AVCTL_HOME/weights/<backend>`. (The local hub cache comes after these; nothing is
    ever downloaded.)"""
    places: list[Path] = []
    if weights is not None:
        places += [Path(weights), Path(weights) / backend]
    home = HOME.get()
    if home:
        places.append(Path(home) / "weights" / backend)
    return places


@dataclass(frozen=True)
class Modality:
    """One control modality: data only. Defaults come from the AVControl paper's Table 5 and §8."""

    name: str
    category: Literal["spatial", "editing", "camera", "motion", "audio", "audio-visual"]
    description: str
    streams: tuple[Stream, ...]  # the stream(s) the reference lives on
    targets: tuple[str, ...]  # LoRA target groups (TARGET_GROUPS)
    rank: int
    steps: int
    train_samples: int  # the paper's training-set size, for reference
    downscale: int = 1  # reference canvas downscale s (small-to-large grid)
    layout: Layout = "parallel"
    # The stream(s) that carry loss. Defaults to the reference stream(s); who-is-talking also trains audio.
    loss_streams: tuple[Stream, ...] | None = None
    # The stream the LoRA does not control: generated jointly with no loss, real media at t = 0, or left out.
    context: Context = "noised"
    strength_direction: Direction = "target"
    paired: bool = False  # data come as (source, target) pairs from a manifest instead of extraction
    # First-frame conditioning (the paper's camera-image): the target's first latent frame is the input image,
    # clean at timestep 0 and out of the loss, in training (the clip's own frame 0) and in `generate --image`.
    first_frame_image: bool = False
    # Builds the default extractor (called once per worker); None when this modality's data are paired media.
    extractor: Callable[..., Extractor] | None = field(default=None, compare=False, repr=False)
    extractor_note: str = ""  # what the default extractor is, or where its data come from
    # Its offline control-fidelity metric for `avctl eval` (see docs/eval.md); None: eval reports none.
    fidelity: FidelityMetric | None = field(default=None, compare=False, repr=False)
    fidelity_note: str = ""  # the metric(s) `fidelity` reports, for `avctl modalities`
    masked: bool = False  # the control comes with a hole mask (mask/<clip>.mp4); eval needs it
    # What `generate --camera` renders this modality's control from: the first-frame image or the --from-video clip.
    camera_from: Literal["image", "video"] | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.targets if t not in TARGET_GROUPS]
        if unknown:
            raise ValueError(f"modality {self.name!r}: unknown LoRA target groups {unknown}; use {TARGET_GROUPS}")
        if self.downscale not in (1, 2, 4, 8):
            raise ValueError(f"modality {self.name!r}: downscale must be 1, 2, 4 or 8")
        if self.layout == "side-by-side" and self.downscale != 1:
            raise ValueError(f"modality {self.name!r}: side-by-side layout needs downscale 1")

    @property
    def alpha(self) -> int:
        return self.rank  # the paper: alpha = rank everywhere

    @property
    def trained_streams(self) -> tuple[Stream, ...]:
        return self.loss_streams or self.streams

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "streams": list(self.streams),
            "loss_streams": list(self.trained_streams),
            "context": self.context,
            "layout": self.layout,
            "downscale": self.downscale,
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "steps": self.steps,
            "train_samples": self.train_samples,
            "strength_direction": self.strength_direction,
            "paired": self.paired,
            "first_frame_image": self.first_frame_image,
            "extractor": self.extractor_note,
            "fidelity": self.fidelity_note,
        }


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


_broken: dict[str, str] = {}  # modality name → why its plugin could not be used (warned about once per process)


def _package(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ep.value.split(":")[0].split(".")[0]


def _skip(ep: importlib.metadata.EntryPoint, reason: str) -> None:
    """A broken third-party plugin is skipped with one warning naming its package; only a command that asks for
    that modality fails (`get_modality`)."""
    message = f"modality plugin {ep.name!r} from package {_package(ep)!r} ({ep.value}) {reason}"
    if ep.name not in _broken:
        sys.stderr.write(f"avctl: warning: {message}; skipped\n")
    _broken[ep.name] = message


def all_modalities() -> dict[str, Modality]:
    """Every registered modality, by name, in registration order. Re-reads the entry points on each call so a
    plugin installed at run time shows up; a plugin that fails to load is skipped with a warning."""
    found: dict[str, Modality] = {}
    for ep in _entry_points():
        if ep.name in found:
            continue  # the same distribution seen twice on sys.path (editable installs)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break every command
            _skip(ep, f"failed to load: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(obj, Modality):
            _skip(ep, "is not a modalities.base.Modality")
            continue
        if obj.name != ep.name:
            _skip(ep, f"is registered as {ep.name!r} but is named {obj.name!r}")
            continue
        found[ep.name] = obj
    return found


def get_modality(name: str) -> Modality:
    registry = all_modalities()
    if name not in registry and name in _broken:
        raise AvctlError(f"{_broken[name]}; fix or uninstall that package")
    if name not in registry:
        raise BadInput(f"unknown modality {name!r}; known: {', '.join(registry) or 'none (is avctl installed?)'}")
    return registry[name]
