"""The parallel canvas: shapes, coordinates, timesteps, loss mask, σ shift, layouts."""

import pytest
import torch

from avctl.canvas import (
    Reference,
    build_stream,
    masked_mse,
    pack_audio,
    pack_video,
    shift_mu,
    shift_sigmas,
    unpack_audio,
    unpack_video,
)
from tests.tiny import fresh_transformer


@pytest.fixture(scope="module")
def transformer():
    return fresh_transformer()


def _channels(transformer):
    return transformer.config.in_channels


def test_pack_roundtrip_and_order():
    lat = torch.randn(2, 4, 3, 2, 5)
    tokens = pack_video(lat)
    assert tokens.shape == (2, 3 * 2 * 5, 4)
    # token order is (f, h, w) row-major: token index f·H·W + h·W + w
    assert torch.equal(tokens[1, 1 * 10 + 1 * 5 + 3], lat[1, :, 1, 1, 3])
    assert torch.equal(unpack_video(tokens, (3, 2, 5)), lat)
    aud = torch.randn(2, 8, 7, 16)
    packed = pack_audio(aud)
    assert packed.shape == (2, 7, 128)
    assert torch.equal(packed[0, 3, 2 * 16 + 5], aud[0, 2, 3, 5])  # feature index c·M + m
    assert torch.equal(unpack_audio(packed, 8), aud)


def test_video_canvas_shapes_timesteps_and_mask(transformer):
    c = _channels(transformer)
    target = torch.randn(2, c, 3, 4, 4)
    ref = torch.randn(2, c, 3, 2, 2)
    sigma = torch.tensor([0.3, 0.9])
    sc = build_stream("video", transformer, target, sigma, [Reference(ref, downscale=2)])
    assert sc.tokens.shape == (2, 48 + 12, c)
    assert sc.coords.shape == (2, 3, 60, 2)
    assert sc.target_len == 48
    assert torch.allclose(sc.timestep[:, :48], (sigma[:, None] * 1000).expand(-1, 48))
    assert torch.all(sc.timestep[:, 48:] == 0)
    assert sc.loss_mask[:, :48].all() and not sc.loss_mask[:, 48:].any()
    assert torch.equal(sc.tokens[:, 48:], pack_video(ref))


def test_reference_token_centres_on_its_target_block(transformer):
    c = _channels(transformer)
    s = 2
    sc = build_stream("video", transformer, torch.randn(1, c, 3, 4, 6), torch.tensor([0.5]),
                      [Reference(torch.randn(1, c, 3, 2, 3), downscale=s)])
    mid = sc.coords.mean(dim=-1)[0]  # [3, T] RoPE midpoints (time s, y px, x px)
    target, ref = mid[:, :72].reshape(3, 3, 4, 6), mid[:, 72:].reshape(3, 3, 2, 3)
    for f in range(3):
        for i in range(2):
            for j in range(3):
                block = target[:, f, s * i : s * i + s, s * j : s * j + s].reshape(3, -1).mean(dim=1)
                assert torch.allclose(ref[:, f, i, j], block), (f, i, j)


def test_side_by_side_places_reference_to_the_right(transformer):
    c = _channels(transformer)
    sc = build_stream("video", transformer, torch.randn(1, c, 2, 2, 3), torch.tensor([0.5]),
                      [Reference(torch.randn(1, c, 2, 2, 3))], layout="side-by-side")
    target_x = sc.coords[0, 2, :12]
    ref_x = sc.coords[0, 2, 12:]
    width_px = float(target_x[:, 1].max())
    assert torch.allclose(ref_x, target_x + width_px)  # same grid, shifted by one frame width
    assert torch.equal(sc.coords[0, :2, 12:], sc.coords[0, :2, :12])  # time and y unchanged
    assert sc.loss_mask[0, :12].all() and not sc.loss_mask[0, 12:].any()
    with pytest.raises(ValueError, match="downscale 1"):
        build_stream("video", transformer, torch.randn(1, c, 2, 2, 4), torch.tensor([0.5]),
                     [Reference(torch.randn(1, c, 2, 1, 2), downscale=2)], layout="side-by-side")


def test_audio_reference_is_time_aligned(transformer):
    ac = transformer.config.audio_in_channels // 16
    sc = build_stream("audio", transformer, torch.randn(1, ac, 10, 16), torch.tensor([0.5]),
                      [Reference(torch.randn(1, ac, 10, 16))])
    assert sc.tokens.shape[1] == 20
    assert torch.equal(sc.coords[:, :, 10:], sc.coords[:, :, :10])  # both start at 0 s
    assert sc.coords[0, 0, 1, 1] - sc.coords[0, 0, 1, 0] == pytest.approx(0.04, abs=1e-6)


def test_clean_context_has_timestep_zero_and_no_loss(transformer):
    ac = transformer.config.audio_in_channels // 16
    sc = build_stream("audio", transformer, torch.randn(1, ac, 6, 16), torch.tensor([0.7]), noisy=False,
                      with_loss=False)
    assert torch.all(sc.timestep == 0) and not sc.loss_mask.any()


def test_mismatched_reference_grid_is_rejected(transformer):
    c = _channels(transformer)
    with pytest.raises(ValueError, match="does not match"):
        build_stream("video", transformer, torch.randn(1, c, 3, 4, 4), torch.tensor([0.5]),
                     [Reference(torch.randn(1, c, 3, 3, 3), downscale=2)])
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            build_stream("video", transformer, torch.randn(1, c, 1, 2, 2), torch.tensor([0.5]),
                         [Reference(torch.randn(1, c, 1, 2, 2), strength=bad)])


def test_masked_mse_is_normalised_by_the_mask_mean():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[:, 2:] = 5.0  # masked-out tokens carry a large error that must not count
    mask = torch.tensor([[True, True, False, False]] * 2)
    assert torch.allclose(masked_mse(pred, target, mask), torch.ones(2))


def test_shift_follows_target_tokens_only():
    assert shift_mu(1024) == pytest.approx(0.95)
    assert shift_mu(4096) == pytest.approx(2.05)
    s = shift_sigmas(torch.linspace(1, 0, 11), shift_mu(4096))
    assert s[0] == pytest.approx(1.0) and s[-1] == 0 and torch.all(s[:-1] >= s[1:])
    assert s[5] > 0.5  # a positive shift keeps more steps at high noise
