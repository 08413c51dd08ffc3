"""bench's FLOP model: a count of the real forward on a meta copy, checked against hand counts; and its JSON."""

import json
from fractions import Fraction

import pytest
import torch
from typer.testing import CliRunner

from avctl.bench import forward_flops, meta_copy
from avctl.canvas import Canvas, Reference, build_stream
from avctl.cli import app
from tests.tiny import backbone, text

DOWNSCALES = (None, 4, 2, 1)  # no reference, then references of 1/16, 1/4 and all of the target's tokens


@pytest.fixture(scope="module")
def counts():
    """(video tokens, FLOPs) per downscale on tiny at a 3×4×4 latent grid."""
    tr = backbone().transformer
    meta = meta_copy(tr)
    assert next(meta.parameters()).device.type == "meta"
    c = tr.config
    x = torch.zeros(1, c.in_channels, 3, 4, 4)
    audio = torch.zeros(1, c.audio_in_channels // 16, 12, 16)
    sigma = torch.tensor([0.5])
    out = {}
    for s in DOWNSCALES:
        refs = [] if s is None else [Reference(torch.zeros(1, c.in_channels, 3, 4 // s, 4 // s), s)]
        canvas = Canvas(build_stream("video", meta, x, sigma, refs), build_stream("audio", meta, audio, sigma))
        out[s] = (canvas.video.tokens.shape[1], forward_flops(meta, canvas, text()))
    return out


def test_linear_flops_per_video_token_match_a_hand_count(counts):
    """Every video token passes through the same Linears; their FLOPs per token, counted by hand from the config."""
    c = backbone().transformer.config
    d = c.num_attention_heads * c.attention_head_dim
    da = c.audio_num_attention_heads * c.audio_attention_head_dim
    per_block = (
        4 * d * d  # self-attention q, k, v, out
        + 2 * d * d  # text cross-attention q, out (its k, v run on the text)
        + 2 * d * da  # audio→video attention q (d→da) and out (da→d)
        + 2 * d * da  # video→audio attention k, v (the video tokens are its keys)
        + 8 * d * d  # feed-forward d→4d→d
    )
    # Per-token timestep: each AdaLN embeds it (sinusoid 256 → d → d) and projects to its parameters.
    adaln = (256 * d + d * d + 6 * d * d) + (256 * d + d * d + 4 * d * d) + (256 * d + d * d + 1 * d * d)
    hand = 2 * (c.in_channels * d + d * c.out_channels + c.num_layers * per_block + adaln)  # 2 FLOPs per MAC
    (t0, f0), (t1, f1) = counts[None], counts[1]
    assert (f1["linear"] - f0["linear"]) == hand * (t1 - t0)


def test_a_smaller_reference_adds_its_share_of_the_target_linear_flops(counts):
    t, f = counts[None]
    full = counts[1][1]["linear"] - f["linear"]  # a 1× reference: as many tokens as the target
    assert counts[2][0] - t == t // 4 and counts[4][0] - t == t // 16
    assert counts[2][1]["linear"] - f["linear"] == full // 4
    assert counts[4][1]["linear"] - f["linear"] == full // 16


def test_attention_flops_are_quadratic_in_video_tokens(counts):
    """Self-attention costs 4·d per token pair per block (QKᵀ and AV); every other attention is linear in T."""
    c = backbone().transformer.config
    d = c.num_attention_heads * c.attention_head_dim
    (t0, a0), (t1, a1), (t2, a2) = ((t, Fraction(f["attention"])) for t, f in (counts[None], counts[2], counts[1]))
    second_difference = ((a2 - a1) / (t2 - t1) - (a1 - a0) / (t1 - t0)) / (t2 - t0)
    assert second_difference == 4 * d * c.num_layers
    totals = [f["total"] for _, f in counts.values()]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)  # grows with the tokens


def test_bench_json_reports_flops_beside_the_token_ratio():
    r = CliRunner().invoke(app, ["bench", "--model", "tiny", "--downscale", "1,2,4", "--strength", "1", "--steps",
                                 "1", "--warmup", "0", "--no-memory", "--no-diffusers", "--json"],
                           env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert "float32" in result["setup"]
    rows = {row["downscale"]: row for row in result["rows"]}
    assert rows[None]["predicted_flops"] < rows[4]["predicted_flops"] < rows[2]["predicted_flops"] \
        < rows[1]["predicted_flops"]
    for s in (2, 4):
        row = rows[s]
        assert row["predicted_ratio_vs_1x"] == pytest.approx(row["predicted_flops"] / rows[1]["predicted_flops"])
        assert row["token_ratio_vs_1x"] == pytest.approx(row["tokens"] / rows[1]["tokens"])
        assert row["ratio_vs_1x"] > 0
    assert rows[1]["predicted_ratio_vs_1x"] == 1.0


def test_bench_dtype_option():
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--model", "tiny", "--downscale", "2", "--strength", "1", "--steps", "1",
                            "--warmup", "0", "--no-memory", "--no-diffusers", "--dtype", "bf16", "--json"],
                      env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 0, r.output
    assert "bfloat16" in json.loads(r.stdout)["setup"]
    r = runner.invoke(app, ["bench", "--model", "tiny", "--dtype", "fp8"], env={"AVCTL_NO_PROGRESS": "1"})
    assert r.exit_code == 2 and "fp8" in r.output
