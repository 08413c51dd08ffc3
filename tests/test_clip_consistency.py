"""`eval --clip-model DIR`: VBench-style consistency from a local (here: tiny random) CLIP model."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from avctl.cli import app
from avctl.errors import BadInput
from avctl.metrics import feature_consistency
from tests.conftest import write_synthetic_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_static_clip_is_fully_consistent_and_noise_is_not(clip_dir):
    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 256, (1, 48, 48, 3), dtype=np.uint8), 6, axis=0)
    name, same = feature_consistency(still, clip_dir)
    assert name == "background_consistency" and same == pytest.approx(1.0, abs=1e-5)
    noise = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    _, varied = feature_consistency(noise, clip_dir)
    assert varied < same
    with pytest.raises(BadInput, match=r"config\.json"):
        feature_consistency(still, clip_dir / "missing")


def test_cli_eval_reports_it_instead_of_not_available(clip_dir, tmp_path):
    clip = write_synthetic_clip(tmp_path / "c.mp4", frames=9, width=64, height=64, fps=24.0)
    r = CliRunner().invoke(app, ["eval", "canny", "--control", str(clip), "--video", str(clip), "--clip-model",
                                 str(clip_dir), "--json"], env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert 0 < res["metrics"]["background_consistency"] <= 1.0 + 1e-6
    assert "background_consistency" not in res["not_available"] and "subject_consistency" in res["not_available"]
