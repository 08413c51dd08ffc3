"""First-frame conditioning (`Modality.first_frame_image`, camera-image's setting): training keeps the target's first
latent frame clean at timestep 0 and out of the loss, on the same tokens where `generate --image` puts the image."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

import avctl.sample as sample_module
from avctl.canvas import pack_video
from avctl.forward import predict
from avctl.modalities.base import get_modality
from avctl.train import collate, step_loss, training_canvas
from tests.conftest import synthetic_frames
from tests.test_train import make_samples
from tests.tiny import backbone, fresh_transformer

# A made-up modality: the field alone switches the behaviour, whatever the modality is called.
PLAIN = dataclasses.replace(get_modality("canny"), name="first-frame-test", downscale=1)
CONDITIONED = dataclasses.replace(PLAIN, first_frame_image=True)


def _batch():
    samples = make_samples(n=2)
    for s in samples:  # a full-size reference (downscale 1) for the test modality
        s.reference = torch.nn.functional.interpolate(s.reference[None], scale_factor=(1, 2, 2))[0]
    batch = collate(samples, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    noise = {k: torch.randn(batch[k].shape, generator=g) for k in ("video", "audio")}
    return batch, noise, torch.tensor([0.7, 0.4])


def test_training_keeps_the_first_latent_frame_clean_at_t0_without_loss():
    tr = fresh_transformer()
    batch, noise, sigma = _batch()
    _, _, f, h, w = batch["video"].shape
    n_first = h * w
    canvas, _ = training_canvas(CONDITIONED, tr, batch, sigma, noise)
    sv = canvas.video
    assert torch.all(sv.timestep[:, :n_first] == 0)
    assert torch.allclose(sv.timestep[:, n_first:sv.target_len], (sigma[:, None] * 1000).expand(-1, (f - 1) * h * w))
    assert not sv.loss_mask[:, :n_first].any() and sv.loss_mask[:, n_first:sv.target_len].all()
    assert torch.equal(sv.tokens[:, :n_first], pack_video(batch["video"])[:, :n_first])  # clean, not noised
    assert torch.allclose(sv.sigma, sigma * 1000)  # the sample's σ is unchanged by the clean tokens

    plain, _ = training_canvas(PLAIN, tr, batch, sigma, noise)
    assert torch.all(plain.video.timestep[:, :plain.video.target_len] > 0) and plain.video.loss_mask[:, :n_first].all()

    # Behaviour: the first frame's noise no longer reaches the loss (it is neither in the input nor in the target).
    other = {"video": noise["video"].clone(), "audio": noise["audio"]}
    other["video"][:, :, :1] += 5.0
    with torch.no_grad():
        same = [step_loss(CONDITIONED, tr, batch, sigma, n)[0] for n in (noise, other)]
        moved = [step_loss(PLAIN, tr, batch, sigma, n)[0] for n in (noise, other)]
    assert torch.allclose(same[0], same[1])
    assert not torch.allclose(moved[0], moved[1])


def test_generation_conditions_on_the_same_tokens_as_training(monkeypatch):
    """`generate(first_frame=...)` gives the image's latent on the first H'·W' tokens at timestep 0, and the causal
    VAE encodes a clip's frame 0 into the same latent, so training's clean tokens (the cached target's first latent
    frame) are what generation conditions on."""
    bb = backbone()
    clip = synthetic_frames(9, 64, 64, seed=4)
    seen = []

    def spy(transformer, canvas, *args, **kw):
        seen.append((canvas.video.tokens.clone(), canvas.video.timestep.clone(), canvas.video.target_len))
        return predict(transformer, canvas, *args, **kw)

    monkeypatch.setattr(sample_module, "predict", spy)
    sample_module.generate(bb, "a red ball", [], width=64, height=64, frames=9, steps=2, first_frame=clip[0])
    grid = bb.latent_grid(9, 64, 64)
    n_first = grid[1] * grid[2]
    with torch.no_grad():
        image_latent = pack_video(bb.encode_video(torch.from_numpy(clip[:1])[None]).float())
        clip_latent = pack_video(bb.encode_video(torch.from_numpy(np.ascontiguousarray(clip))[None]).float())
    assert torch.allclose(clip_latent[:, :n_first], image_latent, atol=1e-5)  # what the cache holds
    assert seen
    for tokens, timestep, target_len in seen:
        assert torch.all(timestep[:, :n_first] == 0) and torch.all(timestep[:, n_first:target_len] > 0)
        assert torch.allclose(tokens[:, :n_first].float(), image_latent, atol=1e-5)

    # The training canvas of a clip with this grid marks exactly the same tokens as given.
    batch, noise, sigma = _batch()
    batch["video"] = clip_latent.transpose(1, 2).reshape(1, -1, *grid).expand(2, -1, -1, -1, -1).clone()
    batch["reference"] = batch["video"].clone()
    noise["video"] = torch.randn(batch["video"].shape, generator=torch.Generator().manual_seed(1))
    canvas, _ = training_canvas(CONDITIONED, fresh_transformer(), batch, sigma, noise)
    assert torch.equal(canvas.video.timestep[0, :target_len] == 0, seen[0][1][0, :target_len] == 0)


def test_camera_image_declares_first_frame_conditioning_and_the_lora_records_it():
    from avctl.train import TrainConfig, lora_metadata

    camera = get_modality("camera-image")
    assert camera.first_frame_image and not get_modality("canny").first_frame_image
    config = TrainConfig(modality="camera-image")
    assert lora_metadata(camera, 4, 1, {}, config)["first_frame_image"] is True
    assert "first_frame_image" not in lora_metadata(get_modality("canny"), 4, 1, {}, TrainConfig(modality="canny"))
