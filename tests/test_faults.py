"""Faults and bad input: what avctl promises (docs/promises.md) — atomic, reproducible outputs, one writer per
dataset, media kept inside the dataset, disk errors as one line, nothing left behind by a refused run."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avctl.cli import app
from avctl.dataset import load_manifest
from avctl.errors import BadInput
from avctl.io import contained, folder_lock
from tests.conftest import write_synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path → sha256."""
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(result) -> bool:
    return result.exit_code != 0 and "Traceback" not in result.output and "error:" in result.output


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AVCTL_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "avctl.cli", *[str(a) for a in args]]


# ------------------------------------------------------------------------------------------------ shared chain
@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """prepare canny (2 clips) → train 2 steps on tiny: (root, dataset, run)."""
    root = tmp_path_factory.mktemp("faults")
    for i in range(2):
        write_synthetic_clip(root / "videos" / f"c{i}.mp4", frames=18, width=128, height=128, fps=24.0, seed=i)
    data, run = root / "data", root / "run"
    r = invoke("prepare", "canny", root / "videos", "--out", data, "--bucket", "128x128x17")
    assert r.exit_code == 0, r.output
    r = invoke("train", "canny", "--data", data, "--out", run, "--model", "tiny", "--steps", "2", "--rank", "4")
    assert r.exit_code == 0, r.output
    return root, data, run


# ------------------------------------------------------------------------------------ 6. reproducible LoRA bytes
_SAVE = """
import sys, torch
from avctl.lora import save_lora
g = torch.Generator().manual_seed(0)
sd = {f"transformer_blocks.{i}.attn1.to_q.lora_{ab}.weight": torch.randn(4, 8, generator=g)
      for i in range(3) for ab in "AB"}
save_lora(sys.argv[1], sd, 2, {"modality": "canny", "rank": 4, "targets": ["V.SA"], "base_model": "tiny",
                               "alpha": 4, "seed": 1, "z": {"b": 1, "a": 2}})
"""


def test_lora_bytes_are_the_same_in_every_process_and_load_everywhere(tmp_path: Path) -> None:
    paths = [tmp_path / f"l{i}.safetensors" for i in range(2)]
    for path in paths:  # separate processes: a per-process hash seed must not reach the file
        subprocess.run([sys.executable, "-c", _SAVE, str(path)], check=True, env=_env(), cwd=ROOT)
    assert len({sha(p) for p in paths}) == 1
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin
    from safetensors import safe_open

    with safe_open(str(paths[0]), "pt") as f:
        meta = f.metadata()
        assert meta["reference_downscale_factor"] == "2" and json.loads(meta["avctl.rank"]) == 4
        assert f.get_tensor("diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight").dtype == torch.bfloat16
    sd = LTX2LoraLoaderMixin.lora_state_dict(str(paths[0]))
    sd = sd[0] if isinstance(sd, tuple) else sd
    assert len(sd) == 6 and all(k.startswith("transformer.") for k in sd)


def test_two_identical_training_runs_give_identical_lora_files(chain: tuple[Path, Path, Path]) -> None:
    root, data, run = chain
    again = root / "run_again"
    r = invoke("train", "canny", "--data", data, "--out", again, "--model", "tiny", "--steps", "2", "--rank", "4")
    assert r.exit_code == 0, r.output
    assert sha(again / "lora.safetensors") == sha(run / "lora.safetensors")


# ---------------------------------------------------------------------------------------- 1. containment
def _escaping_dataset(chain: tuple[Path, Path, Path], tmp_path: Path, how: str) -> tuple[Path, Path, Path]:
    """A copy of the chain's dataset whose first row's video lies outside it (absolute, ../ or a symlink), with a
    decoy file `<stem>.safetensors` beside the outside media: (dataset, outside folder, decoy)."""
    _, data, _ = chain
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    shutil.copytree(data, ds, ignore=shutil.ignore_patterns(".precomputed"))
    outside.mkdir()
    rows = [json.loads(line) for line in (ds / "dataset.jsonl").read_text().splitlines()]
    media = outside / "mylora.mp4"
    shutil.copy(ds / rows[0]["video"], media)
    decoy = outside / "mylora.safetensors"
    decoy.write_bytes(b"a LoRA the user keeps beside its preview clip")
    if how == "absolute":
        rows[0]["video"] = str(media)
    elif how == "dotdot":
        rows[0]["video"] = os.path.relpath(media, ds)
    else:
        (ds / "video" / "link.mp4").symlink_to(media)
        rows[0]["video"] = "video/link.mp4"
    (ds / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ds, outside, decoy


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_manifest_media_outside_the_dataset_is_refused(chain, tmp_path: Path, how: str) -> None:
    ds, outside, decoy = _escaping_dataset(chain, tmp_path, how)
    with pytest.raises(BadInput, match="outside"):
        load_manifest(ds)
    _, rows = load_manifest(ds, allow_outside_media=True)
    assert len(rows) == 2
    if how == "absolute":  # end to end: train refuses before loading a model; nothing outside is touched
        before = tree(outside)
        r = invoke("train", "canny", "--data", ds, "--out", tmp_path / "run", "--model", "tiny", "--steps", "1")
        assert one_line_error(r) and "--allow-outside-media" in r.output
        assert tree(outside) == before and decoy.read_bytes().startswith(b"a LoRA")
        # opted in: the media are read, but the cache is never written beside them
        r = invoke("train", "canny", "--data", ds, "--out", tmp_path / "run", "--model", "tiny", "--steps", "1",
                   "--allow-outside-media")
        assert tree(outside) == before


def test_contained_resolves_symlinks(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "in.mp4").write_bytes(b"x")
    (tmp_path / "root" / "up").symlink_to(tmp_path)
    assert contained("in.mp4", tmp_path / "root") == tmp_path / "root" / "in.mp4"
    for bad in ("/etc/passwd", "../x.mp4", "up/x.mp4"):
        with pytest.raises(BadInput, match="outside"):
            contained(bad, tmp_path / "root")
    assert contained("/etc/passwd", tmp_path / "root", allow_outside=True) == Path("/etc/passwd")


# ------------------------------------------------------------------------------------------ 3. the folder lock
def test_a_second_run_waits_for_the_folder_lock_and_says_so(tmp_path: Path) -> None:
    code = "import sys; from avctl.io import folder_lock\nwith folder_lock(sys.argv[1], 'second'): print('got it')"
    with folder_lock(tmp_path / "ds"):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ds")], env=_env(), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if (tmp_path / "ds" / ".avctl.lock").exists() and proc.poll() is None:
                break
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting while we hold it
    stdout, stderr = proc.communicate(timeout=30)
    assert "got it" in stdout and "waiting" in stderr


def test_two_concurrent_prepares_into_one_folder_keep_every_row(tmp_path: Path) -> None:
    for group in "ab":
        for i in range(3):
            write_synthetic_clip(tmp_path / group / f"{group}{i}.mp4", frames=9, width=64, height=64, fps=12.0,
                                 audio_channels=None, seed=i)
    out = tmp_path / "ds"
    procs = [subprocess.Popen(cli("prepare", "canny", tmp_path / g, "--out", out, "--bucket", "64x64x9"), env=_env(),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in "ab"]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert sorted(r["video"] for r in rows) == [f"video/{g}{i}.mp4" for g in "ab" for i in range(3)]


# --------------------------------------------------------------------------------- 7. leftovers of refused runs
def test_prepare_that_completes_nothing_leaves_no_dataset_behind(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    out = tmp_path / "ds"
    r = invoke("prepare", "canny", tmp_path / "in", "--out", out, "--bucket", "64x64x9")
    assert r.exit_code == 1
    assert not (out / "avctl.json").exists() and not (out / "dataset.jsonl").exists()
    write_synthetic_clip(tmp_path / "in2" / "ok.mp4", frames=9, width=64, height=64, fps=12.0, audio_channels=None)
    r = invoke("prepare", "depth", tmp_path / "in2", "--out", out, "--bucket", "64x64x9")  # another modality: fine
    assert "prepared for" not in r.output


# --------------------------------------------------------------------------------- 2. full and read-only disks
@pytest.fixture
def small_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, object]]:
    """(folder, spoil): a small tmpfs when this machine lets the test mount one (root), else a plain folder; fill
    it with files, then `spoil("full" | "readonly")` fills the tmpfs / remounts it read-only — or, without a mount,
    makes every avctl write fail with ENOSPC / EROFS at the point it would take its final name."""
    folder = tmp_path / "fs"
    folder.mkdir()
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True).returncode == 0

    def spoil(kind: str) -> None:
        if not mounted:
            code = errno.ENOSPC if kind == "full" else errno.EROFS

            def fail(path: Path) -> None:
                raise OSError(code, os.strerror(code), str(path))

            monkeypatch.setattr("avctl.io._fsync", fail)
        elif kind == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            with open(folder / ".filler", "wb", buffering=0) as f:
                for chunk in (1 << 16, 1 << 12, 1):  # down to the last page
                    try:
                        while True:
                            f.write(b"\0" * chunk)
                    except OSError:
                        pass

    yield folder, spoil
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("kind", ["full", "readonly"])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_earlier_outputs(chain, small_fs, kind: str) -> None:
    root, data, run = chain
    folder, spoil = small_fs
    # earlier outputs on the disk: a dataset, a run, a generation
    shutil.copytree(data, folder / "data", ignore=shutil.ignore_patterns(".precomputed"))
    shutil.copytree(run, folder / "run")
    shutil.copy(data / "video" / "c0.mp4", folder / "g.mp4")
    write_synthetic_clip(root / "more" / "new.mp4", frames=18, width=128, height=128, fps=24.0, seed=5)
    before = tree(folder)
    spoil(kind)

    control = sorted((data / "reference").glob("*.mp4"))[0]
    runs = {
        "prepare": invoke("prepare", "canny", root / "more", "--out", folder / "data", "--bucket", "128x128x17"),
        "train": invoke("train", "canny", "--data", data, "--out", folder / "run", "--model", "tiny", "--steps", "3",
                        "--rank", "4"),
        "generate": invoke("generate", "--prompt", "x", "--lora", run / "lora.safetensors", "--control", control,
                           "--model", "tiny", "--width", "128", "--height", "128", "--frames", "9", "--steps", "1",
                           "--out", folder / "g.mp4", "--overwrite"),
        "eval": invoke("eval", "canny", "--control", control, "--video", data / "video" / "c0.mp4", "--sheet",
                       folder / "sheet.png"),
    }
    for name, result in runs.items():
        assert one_line_error(result), (name, result.output)
    after = tree(folder)
    after.pop(".filler", None)
    assert after == before  # nothing new at a final name, every earlier file byte-identical, no temp file left



def test_an_encode_cut_short_by_a_full_disk_never_takes_the_final_name(tmp_path: Path) -> None:
    """ffmpeg writes every frame, then fails writing the mp4 index: only its exit status (or a read-back) shows it."""
    import numpy as np

    from avctl.io import WriteError
    from avctl.media import write_video

    folder = tmp_path / "fs"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                                        str(folder)], capture_output=True).returncode != 0:
        pytest.skip("needs a small tmpfs (root); the full-disk test above covers the rest by injection")
    try:
        (folder / "filler").write_bytes(b"\0" * (1024 * 1024 - 96 * 1024))  # ~96 KiB left
        frames = np.random.default_rng(0).integers(0, 256, (12, 96, 96, 3), dtype=np.uint8)  # noise: ~330 KiB
        with pytest.raises(WriteError, match="cannot write"):
            write_video(folder / "x.mp4", frames, 24.0, lossless=True)
        assert sorted(p.name for p in folder.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ------------------------------------------------------------------------------ 7. refused runs leave nothing
def _mismatched_lora(run: Path, dst: Path) -> Path:
    from safetensors import safe_open

    from avctl.io import save_safetensors

    with safe_open(str(run / "lora.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        meta = f.metadata()
    tensors = {k: torch.zeros(v.shape[0], v.shape[1] + 3, dtype=v.dtype) if "lora_A" in k else v
               for k, v in tensors.items()}
    save_safetensors(tensors, dst, meta)
    return dst


def test_refused_generations_leave_no_files(chain, tmp_path: Path, monkeypatch) -> None:
    import avctl.backbone

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for a generation its arguments already refuse")

    monkeypatch.setattr(avctl.backbone, "load_backbone", no_load)  # every refusal below comes before loading
    root, _data, run = chain
    src = root / "videos" / "c0.mp4"
    out = tmp_path / "o.mp4"
    common = ["generate", "--prompt", "x", "--from-video", src, "--model", "tiny", "--width", "128", "--height",
              "128", "--frames", "9", "--steps", "1", "--out", out]
    for bad in (["--strength=-1"], ["--strength-ramp", "2:0"]):
        r = invoke(*common, "--lora", run / "lora.safetensors", *bad)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    r = invoke(*common, "--lora", _mismatched_lora(run, tmp_path / "wrong.safetensors"))
    assert one_line_error(r) and "does not fit" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.safetensors"]


# ------------------------------------------------------------------------------------- 9. silently accepted
def test_a_kohya_lora_is_converted_on_load(chain, tmp_path: Path) -> None:
    from avctl.io import save_safetensors
    from avctl.lora import read_lora

    _, _, run = chain
    original = read_lora(run / "lora.safetensors")
    kohya = {}
    for key, value in original.state_dict.items():
        module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_down.weight" if kind.startswith("A") else f"{stem}.lora_up.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(float(original.rank))
    save_safetensors(kohya, tmp_path / "kohya.safetensors")
    loaded = read_lora(tmp_path / "kohya.safetensors")
    assert loaded.state_dict.keys() == original.state_dict.keys()
    assert all(torch.equal(loaded.state_dict[k].float(), original.state_dict[k].float()) for k in loaded.state_dict)


def test_a_strength_map_of_another_aspect_is_refused(chain, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    _root, data, run = chain
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((64, 256, 3), 255, np.uint8))
    control = sorted((data / "reference").glob("*.mp4"))[0]
    r = invoke("generate", "--prompt", "x", "--lora", run / "lora.safetensors", "--control", control, "--model",
               "tiny", "--width", "128", "--height", "128", "--frames", "9", "--steps", "1", "--strength-map",
               tmp_path / "wide.png", "--out", tmp_path / "o.mp4")
    assert one_line_error(r) and "stretched" in r.output
    assert not (tmp_path / "o.mp4").exists()


# ------------------------------------------------------------------------------------------ 8. a broken plugin
def test_a_broken_plugin_is_skipped_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_modality.py").write_text("raise ImportError('needs libfoo 2')\n")
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[avctl.modalities]\nbroken = broken_modality:THING\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    write_synthetic_clip(tmp_path / "in" / "a.mp4", frames=9, width=64, height=64, fps=12.0, audio_channels=None)
    env = {**_env(), "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    ok = subprocess.run(cli("prepare", "canny", tmp_path / "in", "--out", tmp_path / "ds", "--bucket", "64x64x9"),
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    warnings = [line for line in ok.stderr.splitlines() if "broken-plugin" in line]
    assert len(warnings) == 1 and "needs libfoo 2" in warnings[0]
    r = invoke("prepare", "broken", tmp_path / "in", "--out", tmp_path / "ds2")
    assert one_line_error(r) and "broken-plugin" in r.output


# ------------------------------------------------------------------------------- 5. eval --runs with --sheet
def test_eval_runs_sheet_draws_an_audio_control_and_keeps_going_past_a_bad_run(tmp_path: Path) -> None:
    from avctl.media import write_wav
    from avctl.metrics import envelope_frames
    from tests.conftest import tone

    runs = tmp_path / "runs"
    for name in "abc":
        write_synthetic_clip(runs / f"{name}.mp4", frames=9, width=64, height=64, fps=24.0, seed=1)
    write_synthetic_clip(tmp_path / "edges.mp4", frames=9, width=64, height=64, fps=24.0, audio_channels=None)
    write_wav(tmp_path / "loud.wav", tone(9 / 24), 48_000)
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 100)
    for name, modality, control in (("a", "audio-intensity", "loud.wav"), ("b", "canny", "edges.mp4"),
                                    ("c", "canny", "bad.mp4")):
        sidecar = {"modality": [modality], "control": [str(tmp_path / control)], "strength": 1.0}
        (runs / f"{name}.json").write_text(json.dumps(sidecar))
    r = invoke("eval", "--runs", runs, "--sheet", tmp_path / "sheet.png", "--json")
    assert r.exit_code == 0, r.output
    results = {Path(row["video"]).stem: row for row in json.loads(r.stdout)}
    assert "audio_envelope_correlation" in results["a"]["metrics"] and "edge_f1" in results["b"]["metrics"]
    assert "skipped" in results["c"] and (tmp_path / "sheet.png").is_file()
    envelope = envelope_frames(tmp_path / "loud.wav")
    assert envelope.shape[0] == 1 and envelope.dtype.name == "uint8" and envelope.max() > 100


def test_audio_files_in_an_input_folder_are_listed_as_skipped(tmp_path: Path) -> None:
    from avctl.media import write_wav
    from avctl.prepare import find_sources
    from tests.conftest import tone

    write_synthetic_clip(tmp_path / "in" / "a.mp4", frames=9, width=64, height=64, fps=12.0, audio_channels=None)
    write_wav(tmp_path / "in" / "voice.wav", tone(0.2), 48_000)
    sources, skipped = find_sources([tmp_path / "in"])
    assert [s.rel for s in sources] == ["a"]
    assert [item["clip"] for item in skipped] == ["voice.wav"] and "audio file" in skipped[0]["reason"]


def test_a_control_made_for_another_modality_is_warned_about(chain, tmp_path: Path) -> None:
    _, data, run = chain
    other = tmp_path / "tracks_data"
    shutil.copytree(data, other, ignore=shutil.ignore_patterns(".precomputed"))
    info = json.loads((other / "avctl.json").read_text())
    (other / "avctl.json").write_text(json.dumps({**info, "modality": "tracks"}))
    r = invoke("generate", "--prompt", "x", "--lora", run / "lora.safetensors", "--control",
               other / "reference" / "c0.mp4", "--model", "tiny", "--width", "128", "--height", "128", "--frames", "9",
               "--steps", "1", "--out", tmp_path / "o.mp4")
    assert r.exit_code == 0, r.output
    assert "is a tracks control but" in r.output and "canny LoRA" in r.output


# ------------------------------------------------------------------------------------------------ kill -9, rerun
def _kill_when(cmd: list[str], ready, timeout: float = 60.0) -> bool:
    """Start `cmd`, SIGKILL it as soon as `ready()` is true; True when it was killed (False: it finished first)."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.kill()
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name and ".precomputed" not in p.parts]


def _whole(folder: Path) -> None:
    """Every media, safetensors and JSON file under `folder` reads back."""
    from safetensors import safe_open

    from avctl.media import probe

    for path in folder.rglob("*"):
        if ".precomputed" in path.parts or not path.is_file():
            continue
        if path.suffix == ".mp4":
            assert probe(path).has_video, path
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    f.get_tensor(key)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]


def test_kill_9_during_prepare_then_rerun(tmp_path: Path) -> None:
    for i in range(5):
        write_synthetic_clip(tmp_path / "in" / f"k{i}.mp4", frames=9, width=64, height=64, fps=12.0, seed=i)
    out = tmp_path / "ds"
    cmd = cli("prepare", "canny", tmp_path / "in", "--out", out, "--bucket", "64x64x9")
    assert _kill_when(cmd, lambda: (out / "dataset.jsonl").is_file())
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert sorted(r["video"] for r in rows) == [f"video/k{i}.mp4" for i in range(5)]
    _whole(out)
    assert _no_temp_files(out)


def test_kill_9_during_train_then_rerun(chain, tmp_path: Path) -> None:
    _, data, _ = chain
    out = tmp_path / "run"
    cmd = cli("train", "canny", "--data", data, "--out", out, "--model", "tiny", "--steps", "12", "--rank", "4",
              "--save-every", "1")
    assert _kill_when(cmd, lambda: (out / "state" / "state.json").is_file())
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 12
    _whole(out)
    assert _no_temp_files(out)


def test_kill_9_during_generate_then_rerun(chain, tmp_path: Path) -> None:
    _, data, run = chain
    out = tmp_path / "g.mp4"
    cmd = cli("generate", "--prompt", "x", "--lora", run / "lora.safetensors", "--control",
              sorted((data / "reference").glob("*.mp4"))[0], "--model", "tiny", "--width", "128", "--height", "128",
              "--frames", "17", "--steps", "2", "--out", out, "--overwrite")
    # killed while the output is being encoded (its temp file exists), or as late as it can be caught
    assert _kill_when(cmd, lambda: any(tmp_path.glob(".g.*")))
    assert not out.exists()  # killed before the output took its name
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    from avctl.media import read_video

    assert read_video(out).frames.shape[0] == 17
    assert json.loads(out.with_suffix(".json").read_text())["video"] == str(out)
    _whole(tmp_path)
    assert _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------------------------------- no pickle
class _Payload:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_file_is_never_unpickled(tmp_path: Path) -> None:
    import pickle

    from avctl.lora import read_lora

    marker = tmp_path / "unpickled"
    for name in ("lora.pt", "lora.ckpt", "disguised.safetensors"):
        (tmp_path / name).write_bytes(pickle.dumps(_Payload(marker)))
        with pytest.raises(BadInput):
            read_lora(tmp_path / name)
        r = invoke("lora", "inspect", tmp_path / name)
        assert r.exit_code != 0
    assert not marker.exists()
