"""Tiled VAE encode and decode (avctl.backbone.VaeTiling) on the pocket VAE (8x spatial, 4x temporal, trained, so
tiles are judged against a meaningful untiled result): small tiles stay close to the untiled VAE, the VAE really sees
only tile-sized inputs, and tiling off is the untiled VAE exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from avctl.backbone import Backbone, VaeTiling, _axis_stride, load_backbone
from avctl.cli import app
from avctl.errors import AvctlError, BadUsage
from tests.conftest import synthetic_frames, write_synthetic_clip

# 64x96 px, 33 frames on pocket's VAE: latents 16 x 9 x 8 x 12.
FRAMES, HEIGHT, WIDTH = 33, 64, 96
# Tiles of 6 latent cells stepping 4 (2-cell overlap), windows of 3 latent frames stepping 1.
SMALL = VaeTiling(tile_px=48, stride_px=32, tile_frames=8, stride_frames=4)


@pytest.fixture(scope="module")
def pocket() -> Backbone:
    return load_backbone("pocket", device="cpu", components={"vae"})


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.from_numpy(synthetic_frames(FRAMES, WIDTH, HEIGHT, seed=3))[None]  # [1, F, H, W, 3] uint8


@pytest.fixture(scope="module")
def untiled(pocket: Backbone, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, decoded frames) of the untiled VAE."""
    pocket.set_vae_tiling(False)
    latents = pocket.encode_video(clip)
    return latents, pocket.decode_video(latents)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-12))


class _Shapes:
    """Input shapes of every call to a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._handle = module.register_forward_pre_hook(lambda _m, args: self.shapes.append(tuple(args[0].shape)))

    def __enter__(self) -> _Shapes:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def largest(self) -> tuple[int, ...]:
        return tuple(max(s[i] for s in self.shapes) for i in range(len(self.shapes[0])))


def test_tiled_decode_sees_only_tiles_and_stays_close(pocket: Backbone, untiled: Any) -> None:
    latents, reference = untiled
    pocket.set_vae_tiling(SMALL)
    with _Shapes(pocket.vae.decoder) as seen:
        tiled = pocket.decode_video(latents)
    assert tiled.shape == reference.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    # The decoder never saw more than a tile: 3 latent frames (8 frames + 1), 6 x 6 latent cells (48 px).
    _, _, frames, height, width = seen.largest()
    assert (frames, height, width) == (3, 6, 6)
    assert len(seen.shapes) == 7 * 2 * 3  # 7 windows over 9 latent frames, each 2 x 3 tiles over 8 x 12 cells
    # Measured 37.3 dB (mean |Δ| 2.2 / 255), where the untiled round trip is 17.8 dB from its input: blending, not a
    # different picture.
    assert _psnr(tiled, reference) > 34
    assert not torch.equal(tiled, reference)


def test_temporal_decode_keeps_frames_in_place(pocket: Backbone, untiled: Any) -> None:
    """diffusers 0.42's framewise decoding shows every frame after its first window one frame late; avctl's windows
    line up: each tiled frame is much nearer the untiled frame at its index than the one before it."""
    latents, reference = untiled
    pocket.set_vae_tiling(VaeTiling(tile_frames=8, stride_frames=4))  # temporal windows only
    with _Shapes(pocket.vae.decoder) as seen:
        tiled = pocket.decode_video(latents)
    assert max(s[2] for s in seen.shapes) == 3 and len(seen.shapes) == 7  # windows start at latent frames 0 … 6
    aligned, shifted = _psnr(tiled, reference), _psnr(tiled[:, 1:], reference[:, :-1])
    # Measured 39.5 dB aligned against 35.3 dB shifted (diffusers' framewise decode: 33.9 against 38.7).
    assert aligned > 37 and aligned > shifted + 2
    for f in range(FRAMES):  # no frame is left out of the blend (worst measured 36.4 dB)
        assert _psnr(tiled[:, f], reference[:, f]) > 33


def test_tiled_encode_sees_only_tiles_and_stays_close(pocket: Backbone, clip: torch.Tensor, untiled: Any) -> None:
    latents, reference = untiled
    pocket.set_vae_tiling(SMALL)
    with _Shapes(pocket.vae.encoder) as seen:
        tiled = pocket.encode_video(clip)
    assert tiled.shape == latents.shape
    # The encoder never saw more than a tile: 9 frames (8 + 1), 48 x 48 px.
    _, _, frames, height, width = seen.largest()
    assert (frames, height, width) == (9, 48, 48)
    assert len(seen.shapes) > 8
    # Measured: mean |Δ| 0.115 of the latents' mean |z|; decoded untiled, 29.8 dB from the untiled round trip, and
    # 17.4 dB from the input against the untiled round trip's 17.8 dB.
    assert ((tiled - latents).abs().mean() / latents.abs().mean()).item() < 0.2
    pocket.set_vae_tiling(False)
    decoded = pocket.decode_video(tiled)
    assert _psnr(decoded, reference) > 27
    assert _psnr(decoded, clip) > _psnr(reference, clip) - 1


def test_off_is_the_untiled_vae_exactly(pocket: Backbone, clip: torch.Tensor) -> None:
    """--no-vae-tiling after a tiled call: the plain diffusers encode and decode, bit for bit."""
    from diffusers import LTX2Pipeline

    vae = pocket.vae
    pocket.set_vae_tiling(SMALL)
    tiled_latents = pocket.encode_video(clip)
    pocket.decode_video(tiled_latents)  # leaves diffusers' tiling attributes set
    pocket.set_vae_tiling(False)
    with _Shapes(vae.encoder) as enc, _Shapes(vae.decoder) as dec:
        latents = pocket.encode_video(clip)
        frames = pocket.decode_video(latents)
    assert enc.shapes == [(1, 3, FRAMES, HEIGHT, WIDTH)] and dec.shapes == [(1, 16, 9, 8, 12)]

    vae.use_tiling = vae.use_framewise_encoding = vae.use_framewise_decoding = vae.use_slicing = False
    with torch.no_grad():
        pixels = clip.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        z = vae.encode(pixels).latent_dist.mode()
        stats = (vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        expected = LTX2Pipeline._normalize_latents(z, *stats)
        video = vae.decode(LTX2Pipeline._denormalize_latents(latents, *stats), return_dict=False)[0]
    assert torch.equal(latents, expected)
    assert torch.equal(frames, ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1))
    assert not torch.equal(tiled_latents, latents)


def test_clips_within_one_tile_are_untiled(pocket: Backbone, clip: torch.Tensor, untiled: Any) -> None:
    """The defaults (512 px, 32 frames) leave a 64x96x33 clip whole: the same latents and frames as tiling off."""
    latents, reference = untiled
    pocket.set_vae_tiling(True)
    assert pocket.vae_tiling == VaeTiling()
    with _Shapes(pocket.vae.encoder) as enc, _Shapes(pocket.vae.decoder) as dec:
        assert torch.equal(pocket.encode_video(clip), latents)
        assert torch.equal(pocket.decode_video(latents), reference)
    assert len(enc.shapes) == len(dec.shapes) == 1


def test_decode_where_diffusers_would_leave_a_one_cell_reflect_tile(pocket: Backbone) -> None:
    """8 x 10 latent cells in tiles of 4 stepping 3: diffusers' own stride leaves a last column 1 cell wide, which
    its reflect padding cannot pad. avctl steps 2 there instead."""
    assert _axis_stride(10, 4, 3, reflect=True) == 2
    assert _axis_stride(8, 4, 3, reflect=True) == 3
    assert _axis_stride(10, 4, 3, reflect=False) == 3
    assert _axis_stride(15, 16, 14, reflect=True) == 16  # 480 px on LTX-2's VAE: one tile row, as the axis fits
    pocket.set_vae_tiling(VaeTiling(tile_px=32, stride_px=24, tile_frames=8, stride_frames=4))
    latents = torch.zeros(1, 16, 3, 8, 10)
    with _Shapes(pocket.vae.decoder) as seen:
        frames = pocket.decode_video(latents)
    assert frames.shape == (1, 9, 64, 80, 3)
    assert min(min(s[3:]) for s in seen.shapes) >= 2


def test_defaults_at_ltx2_geometry() -> None:
    """On a VAE with LTX-2's 32x / 8x grid (tiny's), the defaults cut 768x512 into a 512x512 and a 320x512 tile,
    and decode 832x480, whose rows fit one tile, in one row (diffusers' own stride would leave a 1-cell row)."""
    tiny = load_backbone("tiny", device="cpu", components={"vae"})
    with _Shapes(tiny.vae.encoder) as enc, _Shapes(tiny.vae.decoder) as dec:
        tiny.encode_video(torch.zeros(1, 1, 512, 768, 3, dtype=torch.uint8))
        tiny.decode_video(torch.zeros(1, 16, 1, 16, 24))
        tiny.decode_video(torch.zeros(1, 16, 1, 15, 26))
    assert [s[3:] for s in enc.shapes] == [(512, 512), (512, 320)]
    assert [s[3:] for s in dec.shapes] == [(16, 16), (16, 10), (15, 16), (15, 12)]


def test_settings_are_checked() -> None:
    with pytest.raises(BadUsage, match="must not exceed"):
        VaeTiling(tile_px=64, stride_px=96)
    with pytest.raises(BadUsage, match="positive integer"):
        VaeTiling(tile_frames=0)
    with pytest.raises(BadUsage, match="vae_tiling takes"):
        load_backbone("tiny", components={"vae"}, vae_tiling="yes")  # type: ignore[arg-type]
    assert load_backbone("tiny", components={"vae"}, vae_tiling=False).vae_tiling.enabled is False
    assert load_backbone("tiny", components={"vae"}).vae_tiling == VaeTiling()


def test_cli_flag_reaches_the_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-vae-tiling on prepare, train and generate is passed to load_backbone; the default tiles."""
    import avctl.backbone

    seen: list[Any] = []

    class Stop(AvctlError):
        pass

    def fake_load(*args: Any, vae_tiling: Any = True, **kwargs: Any) -> Any:
        seen.append(vae_tiling)
        raise Stop("stopped at load")

    monkeypatch.setattr(avctl.backbone, "load_backbone", fake_load)
    videos, data = tmp_path / "videos", tmp_path / "ds"
    write_synthetic_clip(videos / "a.mp4", frames=9, width=64, height=64, seed=1)

    def cli(*args: object) -> Any:
        return CliRunner().invoke(app, [str(a) for a in args], env={"AVCTL_NO_PROGRESS": "1"})

    prepare = ("prepare", "canny", videos, "--out", data, "--bucket", "64x64x9", "--model", "tiny", "--encode")
    for flag in ("--no-vae-tiling", "--vae-tiling"):
        assert "stopped at load" in cli(*prepare, flag).output
    assert json.loads((data / "dataset.jsonl").read_text().splitlines()[0])  # prepared before the load
    for flag in ((), ("--no-vae-tiling",)):
        assert "stopped at load" in cli("train", "canny", "--data", data, "--model", "tiny", *flag).output
        assert "stopped at load" in cli("generate", "--prompt", "a dog", "--model", "tiny", "--width", "64",
                                        "--height", "64", "--frames", "9", "--out", tmp_path / "g.mp4", *flag).output
    assert seen == [False, True, True, True, False, False]
    for command in ("prepare", "train", "generate"):
        assert "--no-vae-tiling" in cli(command, "--help").output
