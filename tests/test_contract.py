"""The plugin contract, run for EVERY registered modality (third-party ones included, as `all_modalities()` lists
them): extract on a tiny synthetic clip (with audio; a paired modality gets its pair) → latent cache and canvas →
one training step on the `tiny` model → generate a few frames with that LoRA → `eval`, whose control-fidelity
entries come from the modality's own `Modality.fidelity` hook. A second test registers a third-party modality
(a file in a temp folder with an entry point) with its own metric and finds that metric in `eval`'s report, with
no edit to the core.

An extractor that cannot run offline on a synthetic clip (model weights not installed, no face to find) must say
so with an AvctlError; the rest of the contract then runs on a stand-in control of the right stream and size."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from avctl.errors import AvctlError
from avctl.lora import read_lora
from avctl.media import Bucket, read_video, write_video
from avctl.metrics import VBENCH_NOT_AVAILABLE, evaluate_pair
from avctl.modalities import base
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality, all_modalities
from tests.conftest import SAMPLE_RATE, synthetic_frames, tone
from tests.tiny import backbone, fresh_transformer

FRAMES = 9
FPS = 24.0
LATENT_PIXELS = 32  # the tiny VAE's spatial compression: a reference needs at least one latent per side
# What eval reports for every video, whatever the modality (temporal quality, VBench's model-based scores).
GENERIC = {"warp_error", "flicker", "temporal_flickering", "motion_smoothness", "dynamic_degree",
           "vbench_is_dynamic", *VBENCH_NOT_AVAILABLE}


class StandIn:
    """A control of the modality's stream at the reference size, from the clip itself."""

    backend = "contract-stand-in"
    version = "1"

    def __init__(self, modality: Modality) -> None:
        self.modality = modality

    def __call__(self, clip: Clip) -> Control:
        if "video" not in self.modality.streams:
            return Control(audio=clip.audio, sample_rate=clip.sample_rate)
        height, width = clip.reference_size
        frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in clip.frames])
        mask = np.zeros(frames.shape[:3], np.uint8) if self.modality.masked else None
        if mask is not None:
            mask[:, : height // 2] = 255
        return Control(frames=frames, mask=mask)


def _clip(path: Path, size: int, seed: int) -> Path:
    seconds = (FRAMES + 3) / FPS
    audio = tone(seconds)
    audio[:, : audio.shape[1] // 3] *= 0.05  # a quiet start, so the loudness envelope is not flat
    write_video(path, synthetic_frames(FRAMES + 3, size, size, seed=seed), FPS, audio=audio,
                sample_rate=SAMPLE_RATE)
    return path


def _prepare(modality: Modality, root: Path, size: int) -> tuple[Modality, Path, dict, str]:
    """The prepared dataset (real extractor, else a stand-in after its one-line refusal); returns (the modality as
    used, the dataset, its first row, how the control was made)."""
    from avctl.dataset import load_manifest
    from avctl.prepare import prepare

    source = _clip(root / "in" / "a.mp4", size, seed=1)
    inputs = [source]
    if modality.paired:
        target = _clip(root / "in" / "b.mp4", size, seed=2)
        (root / "pairs.jsonl").write_text(json.dumps({"source": str(source), "target": str(target)}) + "\n")
        inputs = [root / "pairs.jsonl"]
    used, how = modality, "extractor" if not modality.paired else "pairs"
    try:
        summary = prepare(modality, inputs, root / "ds", Bucket(size, size, FRAMES), "a test clip")
        problem = None if summary.done else str(summary.skipped or summary.failed)
    except AvctlError as exc:
        problem = str(exc)
    if problem is not None:
        assert problem.strip(), f"{modality.name}: the extractor failed without saying why"
        used, how = replace(modality, extractor=lambda: StandIn(modality)), "stand-in"
        summary = prepare(used, inputs, root / "ds2", Bucket(size, size, FRAMES), "a test clip")
        assert summary.done, summary.to_dict()
    dataset = root / ("ds2" if how == "stand-in" else "ds")
    _, rows = load_manifest(dataset)
    return used, dataset, rows[0], how


def _run_contract(modality: Modality, root: Path, **eval_kw: Any) -> tuple[dict, str]:
    from avctl.cache import load_samples
    from avctl.dataset import load_manifest
    from avctl.sample import LoraUse, generate, read_keep_audio
    from avctl.train import TrainConfig, train

    size = max(64, LATENT_PIXELS * modality.downscale)
    used, dataset, row, how = _prepare(modality, root, size)
    bb = backbone()
    info, rows = load_manifest(dataset)
    samples, _ = load_samples(bb, dataset, info, rows)
    cfg = TrainConfig(modality=modality.name, out=root / "run", steps=1, rank=4, save_every=1)
    lora = read_lora(train(cfg, used, samples, fresh_transformer(), {"config_hash": bb.config_hash()}).lora_path)
    assert lora.avctl.get("modality") == modality.name

    reference = dataset / (row.get("reference_video") or row["reference_audio"])
    use = (LoraUse(lora, 1.0, control=read_video(reference).frames) if row.get("reference_video")
           else LoraUse(lora, 1.0, control_audio=read_keep_audio(reference, bb)))
    first = read_video(dataset / row["video"]).frames[0] if modality.first_frame_image else None
    made = generate(bb, "a test clip", [use], width=size, height=size, frames=FRAMES, fps=FPS, steps=1, seed=3,
                    first_frame=first)
    video = root / "out.mp4"
    write_video(video, made.frames, made.fps, audio=made.audio, sample_rate=made.sample_rate)

    mask = dataset / "mask" / Path(row["video"]).relative_to("video") if modality.masked else None
    camera = "pan-left" if modality.camera_from else None
    source = root / "in" / "a.mp4"
    return evaluate_pair(modality.name, reference, video, mask=mask, source=source, camera=camera, **eval_kw), how


@pytest.fixture
def hooks_called(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wraps every registered modality's fidelity hook so the test sees eval call it."""
    called: list[str] = []
    real = base.all_modalities

    def wrapped() -> dict[str, Modality]:
        out = {}
        for name, modality in real().items():
            hook = modality.fidelity
            if hook is not None:
                def spy(inp: EvalInput, hook=hook, name=name) -> FidelityResult:
                    called.append(name)
                    return hook(inp)
                modality = replace(modality, fidelity=spy)
            out[name] = modality
        return out

    monkeypatch.setattr(base, "all_modalities", wrapped)
    return called


@pytest.mark.parametrize("name", sorted(all_modalities()))
def test_every_modality_runs_extract_train_generate_eval(name: str, tmp_path: Path, hooks_called: list[str]) -> None:
    modality = all_modalities()[name]
    assert modality.fidelity is not None, f"{name} declares no fidelity metric (Modality.fidelity)"
    result, how = _run_contract(modality, tmp_path)
    assert hooks_called == [name]
    assert "control_fidelity" not in result["not_available"]
    own = {k for k in (*result["metrics"], *result["not_available"]) if k not in GENERIC
           and not k.endswith(("_chance", "_skill"))}
    assert own, f"{name}: eval reported nothing from the modality's fidelity hook ({how} control)"
    for key in own & set(result["not_available"]):
        assert result["not_available"][key].strip()  # a metric it cannot compute says why
    for key in own & set(result["metrics"]):
        value = result["metrics"][key]
        assert isinstance(value, float | int) and not (isinstance(value, float) and np.isnan(value)), (key, value)


def test_a_third_party_modality_s_metric_is_reported_by_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "brightness_modality.py").write_text(textwrap.dedent("""
        import numpy as np

        from avctl.media import read_video
        from avctl.modalities.base import Control, FidelityResult, Modality


        def extract(clip):
            grey = clip.frames.mean(axis=-1, keepdims=True).astype(np.uint8)
            return Control(frames=np.repeat(grey, 3, axis=-1))


        def brightness_gap(inp):
            control = read_video(inp.control).frames.astype(float).mean()
            return FidelityResult(metrics={"brightness_gap": abs(control - inp.output.frames.astype(float).mean())},
                                  compared={"brightness_control": control})


        BRIGHTNESS = Modality(name="brightness", category="spatial", description="follow the brightness",
                              streams=("video",), targets=("V.SA",), rank=4, steps=10, train_samples=1,
                              extractor=lambda: extract, fidelity=brightness_gap,
                              fidelity_note="brightness_gap: mean grey level, control vs output")
    """))
    info = plugin / "brightness_plugin-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brightness-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[avctl.modalities]\nbrightness = brightness_modality:BRIGHTNESS\n")
    monkeypatch.syspath_prepend(str(plugin))
    modality = all_modalities()["brightness"]
    result, how = _run_contract(modality, tmp_path / "run")
    assert how == "extractor"
    assert result["metrics"]["brightness_gap"] >= 0 and "brightness_control" in result["compared"]
    assert "control_fidelity" not in result["not_available"]
