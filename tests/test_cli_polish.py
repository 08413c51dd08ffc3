"""CLI polish: --version, help text shown as written, third-party progress bars off."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from avctl.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def help_of(*args: str) -> str:
    r = runner.invoke(app, [*args, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())  # undo the wrapping


def test_version_prints_the_installed_package_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"avctl {importlib.metadata.version('avctl')}"


def test_angle_and_square_bracket_placeholders_survive_in_help():
    # Markdown help renders `<stem>` as inline HTML and drops it; rich markup eats `[@WEIGHT]`.
    assert "sidecar <stem>.txt" in help_of("prepare")
    assert "Default: datasets/<modality>." in help_of("prepare")
    assert "Default: runs/<modality>." in help_of("train")
    assert "NAME_OR_PATH[@WEIGHT]" in help_of("generate")
    assert "<module>.lora_A/B.weight" in help_of("lora", "convert")


def test_library_progress_bars_are_off_after_any_command():
    # A fresh process: diffusers is imported only after the command ran, as in `avctl generate`.
    code = (
        "from typer.testing import CliRunner\n"
        "from avctl.cli import app\n"
        "assert CliRunner().invoke(app, ['modalities', '--json']).exit_code == 0\n"
        "import diffusers.utils.logging as d, transformers.utils.logging as t, huggingface_hub.utils as h\n"
        "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(), h.are_progress_bars_disabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "True"]
