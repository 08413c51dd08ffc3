"""Attention strength: exact removal at 0, monotone in between, local maps, groups, the fast path, memory shape."""

from itertools import pairwise

import pytest
import torch
from diffusers.models.transformers.transformer_ltx2 import LTX2Attention, LTX2AudioVideoAttnProcessor

from avctl.canvas import Canvas, Reference, build_stream
from avctl.forward import predict
from avctl.strength import StrengthAttnProcessor, StrengthState, plan_strength
from tests.tiny import fresh_transformer, text

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    tr = fresh_transformer()
    c, ac = tr.config.in_channels, tr.config.audio_in_channels // 16
    data = {
        "video": torch.randn(1, c, 3, 4, 4),
        "video_ref": torch.randn(1, c, 3, 2, 2),
        "audio": torch.randn(1, ac, 12, 16),
        "audio_ref": torch.randn(1, ac, 12, 16),
        "sigma": torch.tensor([0.6]),
        "text": text(),
    }
    return tr, data


def run(model, video_refs=(), audio_refs=(), direction="target"):
    tr, d = model
    canvas = Canvas(
        build_stream("video", tr, d["video"], d["sigma"], list(video_refs)),
        build_stream("audio", tr, d["audio"], d["sigma"], list(audio_refs)),
        direction=direction,
    )
    with torch.no_grad():
        v, a = predict(tr, canvas, *d["text"])
    return canvas.video.target(v), canvas.audio.target(a), v, a


def test_strength_zero_equals_no_reference_video_and_audio(model):
    _, d = model
    v0, a0, *_ = run(model)
    v, a, *_ = run(model, [Reference(d["video_ref"], 2, 0.0)])
    assert torch.allclose(v, v0, atol=1e-5) and torch.allclose(a, a0, atol=1e-5)
    v, a, *_ = run(model, audio_refs=[Reference(d["audio_ref"], 1, 0.0)])
    assert torch.allclose(v, v0, atol=1e-5) and torch.allclose(a, a0, atol=1e-5)
    # and the reference does matter at full strength (the test above is not vacuous)
    v1, a1, *_ = run(model, [Reference(d["video_ref"], 2, 1.0)], [Reference(d["audio_ref"], 1, 1.0)])
    assert (v1 - v0).abs().max() > 1e-3 and (a1 - a0).abs().max() > 1e-3


def test_distance_to_full_strength_is_non_increasing_on_tiny_model(model):
    _, d = model

    def out(w):
        v, a, *_ = run(model, [Reference(d["video_ref"], 2, w)], [Reference(d["audio_ref"], 1, w)])
        return torch.cat([v.flatten(), a.flatten()])

    full = out(1.0)
    dists = [float((out(w) - full).norm()) for w in STRENGTHS]
    assert dists[-1] == 0.0
    assert all(a >= b for a, b in pairwise(dists)), dists


def _single_attention(seed=1):
    torch.manual_seed(seed)
    attn = LTX2Attention(query_dim=16, heads=2, kv_heads=2, dim_head=8, rope_type="split").eval()
    state = StrengthState()
    attn.set_processor(StrengthAttnProcessor(state, "video", "video"))
    return attn, state


def _plan(refs):
    """Plan for a canvas of 6 target tokens (grid 1×2×3) and the given (strength, group) references of 6 tokens."""
    tr = fresh_transformer()
    c = tr.config.in_channels
    sc = build_stream("video", tr, torch.zeros(1, c, 1, 2, 3), torch.tensor([0.5]),
                      [Reference(torch.zeros(1, c, 1, 2, 3), 1, w, g) for w, g in refs])
    return plan_strength(Canvas(sc, None))


def test_single_attention_moves_monotonically_towards_full_strength():
    attn, state = _single_attention()
    x = torch.randn(1, 12, 16)  # 6 target tokens + 6 reference tokens

    def out(w):
        state.plans = _plan([(w, 0)])
        with torch.no_grad():
            return attn(x)[:, :6]

    full = out(1.0)
    dists = [float((out(w) - full).norm()) for w in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)]
    assert all(a > b for a, b in pairwise(dists)), dists


def test_reference_groups_do_not_see_each_other():
    attn, state = _single_attention()
    state.plans = _plan([(1.0, 0), (1.0, 1)])
    x = torch.randn(1, 18, 16)  # target | group 0 | group 1
    y = x.clone()
    y[:, 12:] = torch.randn(1, 6, 16)  # change group 1 only
    with torch.no_grad():
        a, b = attn(x), attn(y)
    assert torch.allclose(a[:, 6:12], b[:, 6:12], atol=1e-6)  # group 0 rows never see group 1
    assert not torch.allclose(a[:, :6], b[:, :6], atol=1e-4)  # the target sees both


def test_constant_local_map_equals_global_value(model):
    _, d = model
    v_g, a_g, *_ = run(model, [Reference(d["video_ref"], 2, 0.5)], [Reference(d["audio_ref"], 1, 0.5)])
    v_m, a_m, *_ = run(
        model,
        [Reference(d["video_ref"], 2, torch.full((1, 12), 0.5))],
        [Reference(d["audio_ref"], 1, torch.full((1, 12), 0.5))],
    )
    assert torch.allclose(v_g, v_m, atol=1e-6) and torch.allclose(a_g, a_m, atol=1e-6)


def test_local_map_only_changes_where_it_is_lowered(model):
    _, d = model
    half = torch.ones(1, 12)
    half[:, :6] = 0.0  # first half of the reference tokens removed
    v_full, *_ = run(model, [Reference(d["video_ref"], 2, 1.0)])
    v_half, *_ = run(model, [Reference(d["video_ref"], 2, half)])
    v_none, *_ = run(model, [Reference(d["video_ref"], 2, 0.0)])
    assert not torch.allclose(v_half, v_full, atol=1e-5) and not torch.allclose(v_half, v_none, atol=1e-5)


def test_fast_path_builds_no_bias_and_equals_stock_processor(model):
    tr, d = model
    canvas = Canvas(build_stream("video", tr, d["video"], d["sigma"], [Reference(d["video_ref"], 2, 1.0)]), None)
    assert all(p is None for p in plan_strength(canvas).values())
    torch.manual_seed(2)
    attn = LTX2Attention(query_dim=16, heads=2, kv_heads=2, dim_head=8).eval()
    x = torch.randn(1, 7, 16)
    with torch.no_grad():
        stock = attn(x)
        attn.set_processor(StrengthAttnProcessor(StrengthState(), "video", "video"))
        ours = attn(x)
    assert isinstance(LTX2AudioVideoAttnProcessor(), LTX2AudioVideoAttnProcessor)
    assert torch.equal(stock, ours)


def test_bias_is_per_key_never_per_head_or_square(model):
    tr, d = model
    canvas = Canvas(
        build_stream("video", tr, d["video"], d["sigma"], [Reference(d["video_ref"], 2, 0.5)]),
        build_stream("audio", tr, d["audio"], d["sigma"], [Reference(d["audio_ref"], 1, 0.5)]),
    )
    plans = plan_strength(canvas)
    for (qs, ks), blocks in plans.items():
        n_keys = canvas.stream(ks).tokens.shape[1]
        for blk in blocks or []:
            if blk.bias is not None:
                assert blk.bias.shape == (1, 1, 1, n_keys), (qs, ks, blk.bias.shape)


def test_symmetric_direction_also_scales_reference_rows(model):
    _, d = model
    _, _, v_t, _ = run(model, [Reference(d["video_ref"], 2, 0.5)], direction="target")
    _, _, v_s, _ = run(model, [Reference(d["video_ref"], 2, 0.5)], direction="symmetric")
    _, _, v_1, _ = run(model, [Reference(d["video_ref"], 2, 1.0)], direction="target")
    # one-way strength leaves the first block's reference rows as at full strength; symmetric changes them
    assert not torch.allclose(v_t[:, 48:], v_s[:, 48:], atol=1e-6)
    assert not torch.allclose(v_t, v_1, atol=1e-6)


def test_absent_stream_is_invisible_to_the_present_one(model):
    """`absent` context: no audio tokens reach the video (one stand-in token, audio↔video attention off)."""
    tr, d = model
    video = build_stream("video", tr, d["video"], d["sigma"], [Reference(d["video_ref"], 2, 0.5)])
    with torch.no_grad():
        v_absent, a_absent = predict(tr, Canvas(video, None), *d["text"])
        v_joint, _ = predict(tr, Canvas(video, build_stream("audio", tr, d["audio"], d["sigma"])), *d["text"])
    assert a_absent is None and v_absent.shape == video.tokens.shape and torch.isfinite(v_absent).all()
    assert not torch.allclose(v_absent, v_joint, atol=1e-5)  # the joint run does see audio
