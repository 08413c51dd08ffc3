"""Every environment variable avctl reads is declared once, in avctl/env.py, and the ones a user sets are listed in
`avctl --help`."""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

from avctl import env
from avctl.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _environ_reads(path: Path) -> list[int]:
    """Lines of `path` that touch os.environ or os.getenv."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and isinstance(node.value, ast.Name):
            lines.append(node.lineno)
    return lines


def test_only_env_py_reads_the_environment():
    files = [*(ROOT / "avctl").glob("*.py"), *(ROOT / "modalities").glob("*.py")]
    found = {str(p.relative_to(ROOT)): lines for p in files if p.name != "env.py" and (lines := _environ_reads(p))}
    assert not found, f"read the environment through avctl.env's declarations, not os.environ: {found}"


def test_help_lists_the_user_variables(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for var in env.VARIABLES:
        assert (var.name in result.output) == (var.set_by == "you"), var.name
    assert env.MODEL.name in result.output and env.HOME.name in result.output


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("AVCTL_MODEL", "")
    assert env.model_name(None) is None and env.model_name("tiny") == "tiny"
    monkeypatch.setenv("AVCTL_MODEL", "pocket")
    assert env.model_name(None) == "pocket" and env.model_name("tiny") == "tiny"
