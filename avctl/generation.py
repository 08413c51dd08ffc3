"""`avctl generate` as a library: one request model, its planning before any model loads, and running it.

`GenerateRequest` is the one schema of a generation: the command's flags, a `--config` file, each `--batch` row and
the `request` section of the sidecar written next to every output are all this model (`extra="forbid"`), so a
sidecar can be fed back as `--config` to redo its generation. The rest of the sidecar (what was used: resolved
controls, sizes, the sampler's settings, timings) keeps the keys `avctl eval` and other readers rely on.

Sizing: the output is `width` × `height` when given, else the size of a full-size video that comes with the request
(`keep_video`, then `from_video`, then `image`), else the model's default size — never a control's, since a
control may be a downscaled reference (a prepared 2× reference is half the output's size). A control of any size is
resized to the reference size its LoRA's downscale implies (output ÷ downscale); frames and fps still come from
the first control when not given (a reference has the clip's length and rate).
"""

from __future__ import annotations

import functools
import glob
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Strict,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from avctl.errors import AvctlError, BadInput, BadUsage

StrictNumber = Annotated[float, Strict()]  # an int is accepted, a bool or a string is not
GUIDANCE_FIELDS = {  # request field → sample.Guidance field
    "guidance_scale": "cfg", "audio_guidance_scale": "audio_cfg", "stg_scale": "stg", "audio_stg_scale": "audio_stg",
    "modality_scale": "modality", "audio_modality_scale": "audio_modality", "guidance_rescale": "rescale",
    "audio_guidance_rescale": "audio_rescale", "stg_blocks": "stg_blocks", "cross_timestep": "cross_timestep",
}
# Fields that set up the model or name one output file: the same for every row of a --batch.
MODEL_FIELDS = ("model", "two_stage", "upsampler", "distilled_lora", "vae_tiling", "quantize", "text_encoder_8bit",
                "save_latents")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class GenerateRequest(BaseModel):
    """One generation. Field names are the `generate` flags' (`--from-video` → from_video, `--out` → out)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    # what to make
    prompt: str | None = None
    lora: list[str] = []  # NAME_OR_PATH[@WEIGHT]
    control: list[str] = []  # [NAME=]PATH, one per LoRA
    from_video: Path | None = None
    image: Path | None = None
    keep_video: Path | None = None
    keep_audio: Path | None = None
    camera: str | None = None
    depth: Path | None = None
    fov: StrictNumber = 50.0
    strength: StrictNumber = 1.0
    strength_map: Path | None = None
    strength_ramp: str | None = None  # START:END
    seed: StrictInt = 42
    width: StrictInt | None = None
    height: StrictInt | None = None
    frames: StrictInt | None = None
    fps: StrictNumber | None = None
    out: Path = Path("outputs/generation.mp4")
    preview: StrictBool = False
    # how to sample
    steps: StrictInt | None = None
    schedule: str = "auto"
    preset: str = "auto"
    cfg: StrictNumber | None = None  # both guidance scales, unless one is given on its own
    guidance_scale: StrictNumber | None = None
    audio_guidance_scale: StrictNumber | None = None
    stg_scale: StrictNumber | None = None
    audio_stg_scale: StrictNumber | None = None
    modality_scale: StrictNumber | None = None
    audio_modality_scale: StrictNumber | None = None
    guidance_rescale: StrictNumber | None = None
    audio_guidance_rescale: StrictNumber | None = None
    stg_blocks: list[StrictInt] | None = None  # "28,29" is accepted too
    cross_timestep: StrictBool | None = None
    negative_prompt: str = ""
    composite: StrictBool = False
    # the model (MODEL_FIELDS)
    model: str | None = None
    two_stage: StrictBool = False
    upsampler: Path | None = None
    distilled_lora: str | None = None
    vae_tiling: StrictBool = True
    quantize: str | None = None
    text_encoder_8bit: StrictBool = False
    save_latents: Path | None = None

    @field_validator("lora", "control", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stg_blocks", mode="before")
    @classmethod
    def _blocks(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if not isinstance(value, str):
            return value
        try:
            return [int(b) for b in value.replace(" ", "").split(",") if b]
        except ValueError:
            raise ValueError(f"--stg-blocks {value!r}: give block indices separated by commas, e.g. 28 or "
                             "28,29") from None

    @field_validator("stg_blocks")
    @classmethod
    def _blocks_from_zero(cls, value: list[int] | None) -> list[int] | None:
        if any(b < 0 for b in value or ()):
            raise ValueError("--stg-blocks: block indices start at 0")
        return value

    @field_validator("strength")
    @classmethod
    def _strength(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--strength {value:g} is outside [0, 1] (above 1 copies the reference)")
        return value

    @field_validator("strength_ramp")
    @classmethod
    def _ramp(cls, value: str | None) -> str | None:
        try:
            parse_ramp(value)
        except BadUsage as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("guidance_rescale", "audio_guidance_rescale")
    @classmethod
    def _rescale(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{_flag(info.field_name)} {value:g}: must lie in [0, 1]")
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("--steps must be at least 1")
        return value

    @field_validator("width", "height", "frames")
    @classmethod
    def _positive(cls, value: int | None, info: Any) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"{_flag(info.field_name)} {value}: must be positive")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        from avctl.sample import resolve_schedule

        try:
            resolve_schedule(value)
        except BadUsage as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        from avctl.sample import PRESET_CHOICES

        if value not in PRESET_CHOICES:
            raise ValueError(f"--preset {value!r}: use one of {', '.join(PRESET_CHOICES)}")
        return value

    @field_validator("out")
    @classmethod
    def _mp4(cls, value: Path) -> Path:
        if value.suffix.lower() != ".mp4":
            raise ValueError(f"--out {value}: must end in .mp4")
        return value

    @model_validator(mode="after")
    def _together(self) -> GenerateRequest:
        if self.keep_video is not None and self.keep_audio is not None:
            raise ValueError("--keep-video and --keep-audio: keep one stream, the other is generated")
        if self.two_stage and (self.upsampler is None or self.distilled_lora is None):
            raise ValueError("--two-stage needs --upsampler DIR and --distilled-lora FILE")
        if not self.two_stage and (self.upsampler is not None or self.distilled_lora is not None):
            raise ValueError("--upsampler and --distilled-lora are for --two-stage; add it")
        if self.depth is not None and self.camera is None:
            raise ValueError("--depth is the depth for --camera; give --camera too")
        return self

    # -------------------------------------------------------------------------------------------- derived values
    @property
    def ramp(self) -> tuple[float, float] | None:
        return parse_ramp(self.strength_ramp)

    def guidance_overrides(self) -> dict[str, Any]:
        """The sample.Guidance fields this request sets (the rest come from the preset)."""
        values = self.model_dump(include=set(GUIDANCE_FIELDS))
        for key in ("guidance_scale", "audio_guidance_scale"):
            if values[key] is None:
                values[key] = self.cfg
        if values["stg_blocks"] is not None:
            values["stg_blocks"] = tuple(values["stg_blocks"])
        return {GUIDANCE_FIELDS[k]: v for k, v in values.items() if v is not None}

    def model_name(self) -> str | None:
        """The model to load: the request's, else $AVCTL_MODEL, else None (the backbone's default, LTX-2)."""
        from avctl.env import model_name

        return model_name(self.model)


REQUEST_FIELDS: tuple[str, ...] = tuple(GenerateRequest.model_fields)


def parse_ramp(text: str | None) -> tuple[float, float] | None:
    """--strength-ramp START:END, both in [0, 1]."""
    if text is None:
        return None
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise BadUsage(f"--strength-ramp {text!r}: use START:END, e.g. 1:0") from None
    if not (0 <= start <= 1 and 0 <= end <= 1):
        raise BadUsage("--strength-ramp values must lie in [0, 1]")
    return start, end


def describe_error(exc: ValidationError, where: str = "") -> str:
    """A pydantic error as one line: our own messages as they are, a wrong type or unknown key named by its key."""
    errors = exc.errors()
    prefix = f"{where}: " if where else ""
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return (f"{prefix}unknown key(s) {', '.join(unknown)}; a generate request takes "
                f"{', '.join(REQUEST_FIELDS)}")
    first = errors[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "value_error":
        return prefix + msg
    key = ".".join(str(x) for x in first["loc"])
    return f"{prefix}{key!r}: {msg}"


def make_request(values: dict[str, Any], where: str = "") -> GenerateRequest:
    """A validated request; bad values are a BadUsage of one line."""
    try:
        return GenerateRequest.model_validate(values)
    except ValidationError as exc:
        raise BadUsage(describe_error(exc, where)) from None
    except BadUsage as exc:
        raise BadUsage(f"{where}: {exc}" if where else str(exc)) from None


def read_request_file(path: Path) -> dict[str, Any]:
    """The values of a `--config` file: a YAML or JSON mapping of request fields, or a sidecar `generate` wrote
    (its `request` section), so an output's generation can be redone."""
    if not path.is_file():
        raise BadInput(f"{path}: config file not found")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise BadInput(f"{path}: use a .yaml, .yml or .json config file")
    try:
        import yaml

        data = yaml.safe_load(path.read_text()) or {}  # YAML reads JSON too
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"{path}: cannot parse ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("request"), dict) and "video" in data:
        data = data["request"]
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the config must be a mapping of generate options to values")
    return data


def build_request(config: Path | None, flags: dict[str, Any]) -> GenerateRequest:
    """The request of one `generate` command: the `--config` file's values with the given flags laid over them."""
    values = read_request_file(config) if config is not None else {}
    try:
        return GenerateRequest.model_validate({**values, **flags})
    except ValidationError as exc:
        key = exc.errors()[0]["loc"][:1]
        from_file = config is not None and bool(key) and key[0] in values and key[0] not in flags
        raise BadUsage(describe_error(exc, str(config) if from_file else "")) from None


# ------------------------------------------------------------------------------------------------ --batch
@dataclass
class _Unparsed:
    reason: str


def batch_requests(path: Path, base: GenerateRequest) -> list[tuple[int, GenerateRequest | str]]:
    """The rows of a --batch file (JSON Lines, or a YAML list of mappings), each merged over `base` (the flags and
    --config), or the reason a row is unusable. A row without "out" writes OUT-<n>.mp4 (OUT from --out, n = the
    row's line number, or its position in a YAML list)."""
    if not path.is_file():
        raise BadInput(f"{path}: --batch file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: unreadable batch file ({exc})") from exc
    raw: list[tuple[int, Any]] = []  # (line, value)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            items = yaml.safe_load(text) or []
        except ValueError as exc:
            raise BadInput(f"{path}: cannot parse ({exc})") from None
        if not isinstance(items, list):
            raise BadInput(f"{path}: a YAML batch is a list of mappings, one per generation")
        raw = list(enumerate(items, start=1))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raw.append((n, _Unparsed(f"not JSON ({exc.msg}, column {exc.colno})")))
    base_values = base.model_dump(exclude_unset=False)
    rows: list[tuple[int, GenerateRequest | str]] = []
    for n, row in raw:
        if isinstance(row, _Unparsed):
            rows.append((n, row.reason))
            continue
        if not isinstance(row, dict):
            rows.append((n, "a row must be a JSON object" if path.suffix.lower() not in (".yaml", ".yml")
                         else "a row must be a mapping"))
            continue
        fixed = [k for k in row if k in MODEL_FIELDS]
        if fixed:
            rows.append((n, f"{', '.join(fixed)}: the same for every row (it sets up the model or names one file); "
                            "give it as a flag or in --config"))
            continue
        out = base.out.with_name(f"{base.out.stem}-{n:03d}{base.out.suffix}")
        try:
            rows.append((n, GenerateRequest.model_validate({**base_values, "out": out, **row})))
        except ValidationError as exc:
            rows.append((n, describe_error(exc)))
        except BadUsage as exc:
            rows.append((n, str(exc)))
    if not rows:
        raise BadInput(f"{path}: no rows; write one JSON object per line")
    return rows


# ------------------------------------------------------------------------------------------------ planning
@dataclass
class Plan:
    """Everything about one generation that needs no model, read and checked before the model loads."""

    request: GenerateRequest
    uses: list[Any]  # sample.LoraUse, video controls read
    control_paths: list[Path | None]
    width: int
    height: int
    fps: float
    available: int | None  # frames of the first video that can give the length (control, source, kept video)
    source: Any = None  # media.VideoClip of --from-video
    image: Any = None  # [H, W, 3] uint8
    keep_video: Any = None  # media.VideoClip
    strength_map: Any = None  # [F, H, W] float32
    notes: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.request.out


def _read_image(path: Path) -> Any:
    """A first-frame image as RGB uint8 [H, W, 3]: an image file, or the first frame of a video."""
    from avctl import media

    return media.read_frames_or_image(path, "--image", max_frames=1)[0]


def _read_strength_map(path: Path) -> Any:
    import numpy as np

    from avctl import media

    frames = media.read_frames_or_image(path, "strength map")
    return frames.mean(axis=-1).astype(np.float32) / 255.0  # [F, H, W] grey, white = 1


def lora_aliases(arg: str, lf: Any) -> set[str]:
    """Names a `--control NAME=PATH` may use for a LoRA: the --lora argument, its file stem (the run folder's name
    for runs/NAME/lora.safetensors) and its modality."""
    from avctl.sample import parse_lora_arg

    name, _ = parse_lora_arg(arg)
    aliases = {name, Path(name).stem, lf.path.stem}
    if lf.path.stem == "lora":
        aliases.add(lf.path.parent.name)
    modality = lf.avctl.get("modality")
    if isinstance(modality, str):
        aliases.add(modality)
    return aliases


def control_modality(path: Path) -> str | None:
    """The modality a control file was made for, where that is on record: a prepared dataset's reference/ file (its
    avctl.json) or a control `generate` kept beside its output (OUT.control-N.mp4 and its OUT.json sidecar)."""
    stem, dot, tail = path.name.partition(".control-")
    if dot and tail[:1].isdigit():
        try:
            recorded = json.loads(path.with_name(f"{stem}.json").read_text()).get("modality") or []
            k = int(tail.split(".")[0]) - 1
            return recorded[k] if isinstance(recorded, list) and 0 <= k < len(recorded) else None
        except (OSError, ValueError, AttributeError):
            return None
    for folder in list(path.resolve().parents)[:4]:
        if folder.name == "reference" and (folder.parent / "avctl.json").is_file():
            try:
                found = json.loads((folder.parent / "avctl.json").read_text()).get("modality")
            except (OSError, ValueError, AttributeError):
                return None
            return found if isinstance(found, str) else None
    return None


def check_loras_fit(model: str | None, loras: list[Any]) -> None:
    """A LoRA made for another model is refused from the model's config on `meta`, before its weights load."""
    if not loras:
        return
    from avctl.lora import check_lora_fits
    from avctl.plan import meta_transformer

    transformer = meta_transformer(model)
    for lora in loras if transformer is not None else ():
        check_lora_fits(lora, transformer)


def default_size(model: str | None, uses: list[Any], two_stage: bool = False) -> tuple[int, int]:
    """(width, height): the model's default clip size, grown to a multiple every video LoRA's downscale divides
    (at half size too, for --two-stage)."""
    from avctl.dataset import default_bucket

    downscale = math.lcm(1, *(u.lora.downscale for u in uses if u.stream == "video")) * (2 if two_stage else 1)
    bucket = default_bucket(model, downscale)
    return bucket.width, bucket.height


def plan_generation(request: GenerateRequest, overwrite: bool = False) -> Plan:
    """Everything about one generation that needs no model, so bad input is refused before the model loads: the
    output path, LoRA files, video controls, the --from-video source, the first-frame image, the strength map.
    Audio controls are only checked here; they are read at the model's sample rate later."""
    from avctl import media
    from avctl.sample import LoraUse, open_lora, video_layout

    opts = request
    out_path = opts.out
    if out_path.exists() and not overwrite:
        raise BadInput(f"{out_path}: exists; pass --overwrite or choose another --out")
    if not opts.prompt:
        raise BadUsage("give --prompt TEXT (or --batch FILE.jsonl with a prompt per row)")
    uses: list[Any] = []
    aliases: list[set[str]] = []
    for arg in opts.lora:
        lf, scale = open_lora(arg)
        uses.append(LoraUse(lf, scale))
        aliases.append(lora_aliases(arg, lf))
    video_layout(uses)  # LoRAs of different canvas layouts, or a bad avctl.layout, stop before the model loads
    control_paths: list[Path | None] = [None] * len(uses)
    for i, item in enumerate(opts.control):
        name, sep, path_text = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            idx = [k for k, a in enumerate(aliases) if name in a]
            if not idx:
                raise BadUsage(f"--control {item!r}: no --lora named {name!r} (LoRAs: "
                               f"{', '.join(opts.lora) or 'none'})")
            if len(idx) > 1:
                raise BadUsage(f"--control {item!r}: {name!r} names {len(idx)} LoRAs; use their file names")
            k = idx[0]
        else:
            k, path_text = i, item
        if k >= len(uses):
            raise BadUsage(f"--control {item!r} has no LoRA to go with; give one --lora per control")
        if control_paths[k] is not None:
            raise BadUsage(f"--control {item!r}: {uses[k].name} already has a control ({control_paths[k]})")
        control_paths[k] = Path(path_text)
    length_from: Any = None  # the first video that can give the output's frame count and rate
    notes: list[str] = []
    controls: list[tuple[Path, Any, int]] = []  # (path, frames, downscale) of the video controls, for the size note
    for use, path in zip(uses, control_paths, strict=True):
        if path is None:
            continue
        made_for, wanted = control_modality(path), use.lora.avctl.get("modality")
        if made_for and isinstance(wanted, str) and made_for != wanted:
            notes.append(f"{path} is a {made_for} control but {use.name} is a {wanted} LoRA; the output will not "
                         f"follow it as trained (give a {wanted} control, or --from-video to extract one)")
        if use.stream == "video":
            clip = media.read_video(path)
            use.control = clip.frames
            controls.append((path, clip.frames, use.lora.downscale))
            length_from = length_from or clip
        else:
            media.probe(path)  # missing or unreadable: one line now, not after the model loaded
    source = None
    if opts.from_video is not None:
        if not uses:
            raise BadUsage("--from-video makes controls for LoRAs; give a --lora")
        if all(p is not None for p in control_paths):
            raise BadUsage("--from-video: every LoRA already has a --control; drop one of them")
        source = media.read_video(opts.from_video)
        length_from = length_from or source
    image = _read_image(opts.image) if opts.image is not None else None
    check_camera(opts, uses, control_paths, image, source)
    keep_video = None
    if opts.keep_video is not None:
        if image is not None:
            raise BadUsage("--image conditions a generated video; with --keep-video the video is given")
        keep_video = media.read_video(opts.keep_video)
        length_from = length_from or keep_video
    elif opts.keep_audio is not None:
        media.probe(opts.keep_audio)  # missing or unreadable: one line now
    if opts.preview and not any(u.stream == "video" for u in uses):
        raise BadUsage("--preview shows a video control next to the output; this generation has no video LoRA")
    # The size: given, else a full-size video's (the kept video, the source, the image), else the model's default;
    # never a control's, which may be a downscaled reference.
    full = keep_video or source
    found = full.frames.shape[1:3] if full is not None else image.shape[:2] if image is not None else None
    if found is None and (opts.width is None or opts.height is None):
        dw, dh = default_size(opts.model_name(), uses, opts.two_stage)
        found = (dh, dw)
    height, width = opts.height or found[0], opts.width or found[1]
    if opts.frames is None and length_from is None:
        raise BadUsage(f"give --frames (or a --control / --from-video to take them from); the size is --width "
                       f"{width} --height {height} unless given")
    for path, frames, s in controls:
        ch, cw = frames.shape[1:3]
        if abs(cw / ch - width / height) > 0.02 * width / height:
            notes.append(f"{path}: a {cw}x{ch} control is resized to {width // s}x{height // s} for the "
                         f"{width}x{height} output (its aspect ratio changes); pass --width/--height of its shape")
    smap = _read_strength_map(opts.strength_map) if opts.strength_map else None
    if smap is not None:
        map_h, map_w = smap.shape[1:3]
        if abs(map_w / map_h - int(width) / int(height)) > 0.02 * int(width) / int(height):
            raise BadInput(f"{opts.strength_map}: the strength map is {map_w}x{map_h} but the output is "
                           f"{width}x{height}; it would be stretched, so give a map of the output's aspect ratio")
    return Plan(
        request=opts, uses=uses, control_paths=control_paths, source=source, image=image, keep_video=keep_video,
        width=int(width), height=int(height), available=len(length_from.frames) if length_from else None,
        fps=float(opts.fps or (length_from.fps if length_from else 24.0)), strength_map=smap, notes=notes,
    )


def camera_from(use: Any) -> str | None:
    """What `--camera` renders this LoRA's control from ("image" or "video": its modality's `camera_from`), or None
    for a modality `--camera` does not serve (or one not installed)."""
    from avctl.modalities.base import all_modalities

    found = all_modalities().get(use.lora.avctl.get("modality"))
    return found.camera_from if found is not None else None


def camera_use(uses: list[Any], control_paths: list[Path | None]) -> int | None:
    """Index of the camera LoRA whose control `--camera` renders (the first LoRA of a modality with `camera_from`,
    e.g. camera-image / camera-video, without a --control), or None."""
    for k, (use, path) in enumerate(zip(uses, control_paths, strict=True)):
        if path is None and camera_from(use) is not None:
            return k
    return None


def check_camera(opts: GenerateRequest, uses: list[Any], control_paths: list[Path | None], image: Any,
                 source: Any) -> None:
    """Refuse a --camera that cannot be used, before the model loads."""
    from avctl.camera import resolve_camera

    if opts.camera is None:
        return
    k = camera_use(uses, control_paths)
    if k is None:
        raise BadUsage("--camera renders the control of a camera-image or camera-video LoRA without a --control; "
                       "give such a --lora")
    if not 0 < float(opts.fov or 0) < 180:
        raise BadUsage(f"--fov {opts.fov}: must be in (0, 180) degrees")
    modality, render_from = uses[k].lora.avctl.get("modality"), camera_from(uses[k])
    if render_from == "image" and image is None:
        raise BadUsage(f"--camera with a {modality} LoRA renders --image along the trajectory; give --image")
    if render_from == "video" and source is None:
        raise BadUsage(f"--camera with a {modality} LoRA re-renders --from-video along the trajectory; give "
                       "--from-video")
    if opts.frames:
        resolve_camera(str(opts.camera), int(opts.frames), float(opts.fov))  # a bad preset or JSON: now


def camera_control(backbone: Any, plan: Plan, f: int) -> tuple[int, Any, Any] | None:
    """`--camera`: the camera LoRA's index, its rendered control [F, h, w, 3] and the trajectory, or None."""
    from avctl.camera import camera_image_control, camera_video_control_for

    opts, uses = plan.request, plan.uses
    if opts.camera is None:
        return None
    k = camera_use(uses, plan.control_paths)
    assert k is not None  # check_camera
    lora = uses[k].lora
    s, h, w = lora.downscale, plan.height, plan.width
    device = str(backbone.device)
    if camera_from(uses[k]) == "image":
        control, trajectory = camera_image_control(plan.image, str(opts.camera), f, (h // s, w // s),
                                                   depth=opts.depth, fov=float(opts.fov), device=device)
    else:
        control, trajectory = camera_video_control_for(plan.source.frames[:f], str(opts.camera), (h // s, w // s),
                                                       depth=opts.depth, source_fov=float(opts.fov), device=device)
    return k, control, trajectory


# ------------------------------------------------------------------------------------------------ the model
def check_model_options(request: GenerateRequest, batch: bool = False) -> None:
    """Model-level options refused before anything loads."""
    from avctl.quantize import check_quantize_args

    check_quantize_args(request.quantize, request.text_encoder_8bit)
    if request.two_stage:
        from avctl.sample import open_lora

        if not Path(request.upsampler).is_dir():
            raise BadInput(f"--upsampler {request.upsampler}: not a folder")
        open_lora(str(request.distilled_lora))
    if request.save_latents is not None and batch:
        raise BadUsage("--save-latents names one file; it cannot be used with --batch")


@dataclass
class Model:
    """A loaded backbone with what a request set up around it (the two-stage upsampler and distilled LoRA)."""

    backbone: Any
    two_stage: Any = None  # sample.TwoStage


def load_model(request: GenerateRequest, log: Callable[[str], None] | None = None) -> Model:
    """The request's model: loaded, with --two-stage's upsampler, quantized (one `log` line per quantized part)."""
    from avctl.backbone import open_backbone
    from avctl.quantize import quantize_backbone
    from avctl.sample import TwoStage, load_upsampler, open_lora

    backbone = open_backbone(request.model_name(), vae_tiling=request.vae_tiling)
    two_stage = None
    if request.two_stage:
        lora, scale = open_lora(str(request.distilled_lora))
        two_stage = TwoStage(load_upsampler(Path(request.upsampler), backbone.device), lora, scale)
    for report in quantize_backbone(backbone, request.quantize, request.text_encoder_8bit):
        if log is not None:
            log(f"quantized {report.summary()}")
    return Model(backbone, two_stage)


def resolve_guidance(backbone: Any, request: GenerateRequest) -> tuple[Any, Any]:
    """The preset (the request's, or the model's own) and its guidance with the request's values laid over it."""
    from dataclasses import replace

    from avctl.sample import resolve_preset

    preset = resolve_preset(request.preset, backbone)
    return preset, replace(preset.guidance, **request.guidance_overrides())


# ------------------------------------------------------------------------------------------------ running
Progress = Callable[[int, int], None]


def run_generation(model: Model, plan: Plan, warn: Callable[[str], None],
                   progress: Progress | None = None) -> dict[str, Any]:
    """Generate one planned request with a loaded model and write the mp4, the sidecar and, with `preview`, the
    preview and contact sheet. Returns the sidecar."""
    from avctl import media
    from avctl.io import atomic_write
    from avctl.modalities.base import all_modalities
    from avctl.sample import control_from_video, generate, read_keep_audio, write_preview

    backbone, opts, uses, out_path = model.backbone, plan.request, plan.uses, plan.out
    w, h, rate = plan.width, plan.height, plan.fps
    t = backbone.vae_temporal
    f = opts.frames or max(1, (plan.available - 1) // t * t + 1)
    control_used: list[str | None] = [str(p) if p is not None else None for p in plan.control_paths]
    camera_file = None
    later: list[Callable[[], Any]] = []  # files kept beside the output, written only once generation succeeded
    for note in plan.notes:
        warn(note)
    rendered = camera_control(backbone, plan, f)
    if rendered is not None:  # kept next to the output with its trajectory, to evaluate (rotation error) and redo
        from avctl.camera import save_trajectory

        k, uses[k].control, trajectory = rendered
        written = out_path.with_name(f"{out_path.stem}.control-{k + 1}.mp4")
        later.append(functools.partial(media.write_video, written, uses[k].control, rate, lossless=True))
        control_used[k] = str(written)
        camera_file = out_path.with_name(f"{out_path.stem}.camera.json")
        later.append(functools.partial(save_trajectory, trajectory, camera_file))
    src_audio: Any = None
    for k, (use, path) in enumerate(zip(uses, plan.control_paths, strict=True)):
        if use.control is not None and path is None:
            continue  # rendered by --camera
        if path is not None and use.stream == "audio":
            wav = media.read_audio(path, backbone.audio_sample_rate, 2)
            if wav is None:
                raise BadInput(f"{path}: has no audio stream; the audio LoRA {use.name} needs a .wav or a video "
                               "with sound")
            use.control_audio = wav
        elif path is None and plan.source is not None:
            source_path = Path(opts.from_video)
            if src_audio is None:
                src_audio = media.read_audio(source_path, backbone.audio_sample_rate, 2)
            video, audio = control_from_video(
                use.lora, plan.source.frames, plan.source.fps, width=w, height=h, frames=f,
                seed=opts.seed, key=source_path.name,
                audio=src_audio, audio_rate=backbone.audio_sample_rate,
            )
            use.control, use.control_audio = video, audio
            if video is not None:  # kept next to the output, so the generation can be evaluated and redone
                written = out_path.with_name(f"{out_path.stem}.control-{k + 1}.mp4")
                later.append(functools.partial(media.write_video, written, video, rate, lossless=True))
                control_used[k] = str(written)
            else:
                control_used[k] = f"{opts.from_video} (audio)"
    if plan.source is not None and len(plan.source.frames) > f:
        warn(f"{opts.from_video}: {len(plan.source.frames)} frames; using the first {f}")
    known = all_modalities()
    for use in uses:
        mod = known.get(use.lora.avctl.get("modality") or "")
        if mod is not None and mod.first_frame_image and plan.image is None:
            warn(f"{use.name} ({mod.name}) was trained with a first-frame image; pass --image for it to work as "
                 "trained")
    keep_video = plan.keep_video.frames if plan.keep_video is not None else None
    keep_audio = read_keep_audio(Path(opts.keep_audio), backbone, f / rate) if opts.keep_audio is not None else None
    _, guidance = resolve_guidance(backbone, opts)
    result = generate(
        backbone, opts.prompt or "", uses, width=w, height=h, frames=f, fps=rate, strength=opts.strength,
        strength_map=plan.strength_map, strength_ramp=opts.ramp, steps=opts.steps, seed=opts.seed,
        composite=opts.composite, first_frame=plan.image, schedule=opts.schedule, warn=warn,
        keep_video=keep_video, keep_audio=keep_audio, preset=opts.preset, guidance=guidance,
        negative_prompt=opts.negative_prompt, two_stage=model.two_stage, progress=progress,
    )
    for stale in out_path.parent.glob(f".{glob.escape(out_path.stem)}.*.tmp.*"):  # a killed run's half-written output
        stale.unlink(missing_ok=True)
    for write in later:
        write()
    media.write_video(out_path, result.frames, result.fps, audio=result.audio, sample_rate=result.sample_rate)
    if opts.save_latents is not None:
        from safetensors.torch import save_file

        from avctl.sample import pipeline_latents

        save_file(pipeline_latents(backbone, result.final_latents), str(opts.save_latents))
    sidecar = _sidecar(backbone, plan, result, control_used, camera_file, (w, h, f, rate))
    if opts.preview:
        preview, sheet = write_preview(out_path, result, caption=opts.prompt or "")
        sidecar.update(preview=str(preview), sheet=str(sheet))
    atomic_write(out_path.with_suffix(".json"), json.dumps(sidecar, indent=2))
    return sidecar


def _sidecar(backbone: Any, plan: Plan, result: Any, control_used: list[str | None], camera_file: Path | None,
             size: tuple[int, int, int, float]) -> dict[str, Any]:
    """What `generate` writes next to its output: what was used (the keys `avctl eval` reads) and, under
    "request", the request itself, which `--config` takes back."""
    opts, uses = plan.request, plan.uses
    w, h, f, rate = size
    return {
        "video": str(plan.out),
        "prompt": opts.prompt,
        "modality": [u.lora.avctl.get("modality") for u in uses],
        "loras": [{"path": str(u.lora.path), "scale": u.scale, "downscale": u.lora.downscale,
                   "stream": u.stream, "layout": u.layout} for u in uses],
        "layout": result.settings["layout"],  # the canvas the video references were sampled on
        "control": control_used,
        "from_video": str(opts.from_video) if opts.from_video else None,
        "image": str(opts.image) if opts.image else None,
        "keep_video": str(opts.keep_video) if opts.keep_video else None,
        "keep_audio": str(opts.keep_audio) if opts.keep_audio else None,
        "camera": opts.camera,
        "camera_file": str(camera_file) if camera_file else None,
        "fov": opts.fov if opts.camera else None,
        "composite": opts.composite,
        "strength": opts.strength,
        "strength_map": str(opts.strength_map) if opts.strength_map else None,
        "strength_ramp": opts.strength_ramp,
        "seed": opts.seed,
        "steps": result.steps,
        "schedule": result.schedule,
        "cfg": result.settings["guidance"]["cfg"],
        "sampler": result.settings,
        "latents": str(opts.save_latents) if opts.save_latents is not None else None,
        "model": backbone.model_id,
        "size": {"width": w, "height": h, "frames": f, "fps": rate},
        "audio_sample_rate": result.sample_rate,
        "warnings": result.warnings,
        "timings": result.timings,
        "request": opts.model_dump(mode="json"),
    }


# ------------------------------------------------------------------------------------------------ entry points
@dataclass
class Hooks:
    """How a generation reports: one-line notes, progress bars and each batch row's outcome (the CLI prints
    them; all optional)."""

    log: Callable[[str], None] | None = None  # e.g. what was quantized
    warn: Callable[[str, str], None] | None = None  # (where, message); where is "" for a single generation
    progress: Callable[[str], Progress] | None = None  # label → (done, total) callback
    done: Callable[[str, dict[str, Any]], None] | None = None  # (where, sidecar) per batch row
    failed: Callable[[str, str], None] | None = None  # (where, message) per batch row


def _warner(hooks: Hooks, where: str) -> Callable[[str], None]:
    return lambda msg: hooks.warn(where, msg) if hooks.warn is not None else None


def generate_one(request: GenerateRequest, overwrite: bool = False, hooks: Hooks | None = None) -> dict[str, Any]:
    """One generation: checked and planned before the model loads, then generated; returns the sidecar."""
    hooks = hooks or Hooks()
    check_model_options(request)
    plan = plan_generation(request, overwrite)
    check_loras_fit(request.model_name(), [use.lora for use in plan.uses])
    model = load_model(request, hooks.log)
    progress = hooks.progress("generate") if hooks.progress is not None else None
    return run_generation(model, plan, _warner(hooks, ""), progress)


def generate_batch(path: Path, request: GenerateRequest, overwrite: bool = False,
                   hooks: Hooks | None = None) -> list[dict[str, Any]]:
    """Every row of a --batch file over `request`, with the model loaded once. A bad row is reported (`failed`)
    and the rest go on; each result is {"line": n, **sidecar} or {"line": n, "error": message}."""
    hooks = hooks or Hooks()
    check_model_options(request, batch=True)
    rows = batch_requests(path, request)
    model = load_model(request, hooks.log) if any(isinstance(r, GenerateRequest) for _, r in rows) else None
    results: list[dict[str, Any]] = []
    for n, row in rows:
        where = f"{path.name} line {n}"
        try:
            if isinstance(row, str):
                raise BadUsage(row)
            plan = plan_generation(row, overwrite)
            progress = hooks.progress(where) if hooks.progress is not None else None
            sidecar = run_generation(model, plan, _warner(hooks, where), progress)
            results.append({"line": n, **sidecar})
            if hooks.done is not None:
                hooks.done(where, sidecar)
        except AvctlError as exc:
            results.append({"line": n, "error": str(exc)})
            if hooks.failed is not None:
                hooks.failed(where, str(exc))
    return results
