"""Generation on the tiny model: determinism, strength semantics end to end, LoRA resolution, strength maps."""

from itertools import pairwise

import numpy as np
import pytest
import torch

from avctl.errors import BadInput, BadUsage
from avctl.lora import add_lora, lora_state_dict, read_lora, save_lora
from avctl.sample import LoraUse, generate, parse_lora_arg, resolve_lora, strength_tokens
from tests.tiny import backbone, fresh_transformer

SIZE = {"width": 128, "height": 128, "frames": 9, "fps": 24.0, "steps": 3}


@pytest.fixture(scope="module")
def lora_path(tmp_path_factory):
    tr = fresh_transformer()
    add_lora(tr, ("V.SA",), rank=4)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("lora") / "canny.safetensors"
    save_lora(path, lora_state_dict(tr), downscale=2, avctl_meta={"modality": "canny", "streams": ["video"]})
    return path


@pytest.fixture(scope="module")
def control():
    rng = np.random.default_rng(0)
    return (rng.random((9, 128, 128, 3)) * 255).astype(np.uint8)


def gen(lora_path, control, **kw):
    args = {**SIZE, **kw}
    use_refs = args.pop("use_references", True)
    return generate(backbone(), "a red ball", [LoraUse(read_lora(lora_path), 1.0, control)],
                    use_references=use_refs, **args)


def test_same_seed_same_output_and_shapes(lora_path, control):
    a, b = gen(lora_path, control), gen(lora_path, control)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert a.frames.shape == (9, 128, 128, 3) and a.frames.dtype == np.uint8
    assert a.audio.shape == (2, round(9 / 24 * backbone().vocoder_sample_rate))
    c = gen(lora_path, control, seed=7)
    assert not torch.equal(a.final_latents["video"], c.final_latents["video"])


def test_strength_zero_equals_no_reference_tokens(lora_path, control):
    zero = gen(lora_path, control, strength=0.0)
    none = gen(lora_path, control, use_references=False)
    for k in ("video", "audio"):
        assert torch.allclose(zero.final_latents[k], none.final_latents[k], atol=1e-4)
    full = gen(lora_path, control, strength=1.0)
    assert not torch.allclose(full.final_latents["video"], none.final_latents["video"], atol=1e-3)


def test_distance_to_full_strength_is_non_increasing(lora_path, control):
    full = gen(lora_path, control, strength=1.0).final_latents["video"]
    d = [float((gen(lora_path, control, strength=w).final_latents["video"] - full).norm())
         for w in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert d[-1] == 0 and all(x >= y for x, y in pairwise(d)), d


def test_constant_map_equals_global_strength(lora_path, control):
    a = gen(lora_path, control, strength=0.5).final_latents["video"]
    b = gen(lora_path, control, strength=1.0, strength_map=np.full((128, 128), 0.5, np.float32)).final_latents["video"]
    assert torch.allclose(a, b, atol=1e-5)


def test_the_lora_itself_changes_the_output(lora_path, control):
    with_lora = gen(lora_path, control, use_references=False).final_latents["video"]
    plain = generate(backbone(), "a red ball", [], **SIZE).final_latents["video"]
    assert not torch.allclose(with_lora, plain, atol=1e-4)


def test_strength_tokens_maps_and_ramps():
    assert strength_tokens((3, 2, 2), 8, 1.0) == 1.0  # fast path: a plain scalar
    m = np.zeros((17, 64, 64), np.float32)
    m[:, :, 32:] = 1.0  # right half full strength
    t = strength_tokens((3, 2, 2), 8, 1.0, m).reshape(3, 2, 2)
    assert torch.all(t[:, :, 0] == 0) and torch.all(t[:, :, 1] == 1)
    r = strength_tokens((3, 2, 2), 8, 1.0, ramp=(1.0, 0.0)).reshape(3, 2, 2)
    assert torch.allclose(r[:, 0, 0], torch.tensor([1.0, 0.5, 0.0]))


def test_lora_argument_parsing_and_resolution(tmp_path, monkeypatch, lora_path):
    assert parse_lora_arg("depth@0.5") == ("depth", 0.5)
    assert parse_lora_arg("me@home/x.safetensors") == ("me@home/x.safetensors", 1.0)
    assert parse_lora_arg("runs/a@b@0.8") == ("runs/a@b", 0.8)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "depth").mkdir(parents=True)
    (tmp_path / "runs" / "depth" / "lora.safetensors").write_bytes(lora_path.read_bytes())
    assert resolve_lora("depth") == tmp_path.joinpath("runs/depth/lora.safetensors").relative_to(tmp_path)
    home = tmp_path / "home"
    (home / "runs" / "pose").mkdir(parents=True)
    (home / "runs" / "pose" / "lora.safetensors").write_bytes(b"x")
    monkeypatch.setenv("AVCTL_HOME", str(home))
    assert resolve_lora("pose") == home / "runs" / "pose" / "lora.safetensors"
    with pytest.raises(BadInput, match="tried: nope"):
        resolve_lora("nope")


def test_bad_generation_requests(lora_path, control):
    with pytest.raises(BadUsage, match="outside"):
        gen(lora_path, control, strength=1.5)
    with pytest.raises(BadInput, match="frames"):
        gen(lora_path, control[:5])
    with pytest.raises(BadUsage, match="multiples of 64"):
        gen(lora_path, control, width=96)
