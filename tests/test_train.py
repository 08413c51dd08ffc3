"""Training: the loss falls, resume is bit-exact, bad input stops before any step."""

import json

import pytest
import torch
from safetensors.torch import load_file

from avctl.cache import Sample
from avctl.errors import BadInput, BadUsage
from avctl.modalities.base import get_modality
from avctl.train import TrainConfig, collate, draw_noise, step_loss, train
from tests.tiny import backbone, fresh_transformer, text

CANNY = get_modality("canny")


def make_samples(n=4, seed=0):
    """Latent samples where the reference determines the target (the target is an upsampled, scaled copy of the
    reference), so a control LoRA has something to learn."""
    g = torch.Generator().manual_seed(seed)
    tr = backbone().transformer
    c, ac = tr.config.in_channels, tr.config.audio_in_channels // 16
    tv, ta, tm = text()
    out = []
    for _ in range(n):
        ref = torch.randn(c, 2, 2, 2, generator=g)
        video = torch.nn.functional.interpolate(ref[None], scale_factor=(1, 2, 2), mode="nearest")[0] * 0.8
        out.append(Sample(video=video, audio=torch.randn(ac, 8, 16, generator=g) * 0.1, reference=ref,
                          text_video=tv[0], text_audio=ta[0], text_mask=tm[0], fps=24.0))
    return out


def cfg(tmp_path, **kw):
    base = {"modality": "canny", "out": tmp_path / "run", "steps": 8, "rank": 4, "save_every": 4, "lr": 1e-3}
    base.update(kw)
    return TrainConfig(**base)


def test_loss_on_fixed_batch_falls(tmp_path):
    samples = make_samples()
    tr = fresh_transformer()
    g = torch.Generator().manual_seed(123)
    batch = collate(samples, torch.device("cpu"))
    sigma = torch.full((len(samples),), 0.5)
    noise = draw_noise(g, batch)
    evals = []

    def evaluate(step, total, row):
        with torch.no_grad():
            loss, _ = step_loss(CANNY, tr, batch, sigma, noise)
        evals.append(float(loss))

    train(cfg(tmp_path, steps=50, lr=3e-3, save_every=50), CANNY, samples, tr, {}, progress=evaluate)
    assert len(evals) == 50
    first, last = sum(evals[:10]) / 10, sum(evals[-10:]) / 10
    assert last < first, (first, last)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 51))
    assert {"loss", "loss_video", "lr", "step_time_s", "world_size"} <= rows[0].keys()
    assert "loss_audio" not in rows[0]  # a video LoRA skips the audio loss
    assert rows[0]["lr"] == pytest.approx(3e-3) and rows[-1]["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("loraplus", [1.0, 4.0])
def test_killed_run_resumes_bit_identically(tmp_path, loraplus):
    """Also with LoRA+ groups, whose optimizer order differs from the parameters' (the state is saved by name)."""
    samples = make_samples()
    full = train(cfg(tmp_path / "a", loraplus_lr_ratio=loraplus), CANNY, samples, fresh_transformer(), {})
    # "killed" at step 6: the last save was at step 4; steps 5-6 are lost and must be replayed identically
    part = train(cfg(tmp_path / "b", loraplus_lr_ratio=loraplus), CANNY, samples, fresh_transformer(), {},
                 stop_after=6)
    assert part.steps == 6 and not part.lora_path.exists()
    resumed = train(cfg(tmp_path / "b", loraplus_lr_ratio=loraplus), CANNY, samples, fresh_transformer(), {})
    assert resumed.resumed_from == 4 and resumed.steps == 8
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = load_file(str(next((tmp_path / "a" / "run" / "state").glob("state_*.safetensors"))))
    state_b = load_file(str(next((tmp_path / "b" / "run" / "state").glob("state_*.safetensors"))))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # fp32 weights and moments too
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the counter continued; no step logged twice
    ckpts = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_00004.safetensors", "step_00008.safetensors"]


def test_loraplus_ratio_gives_lora_b_that_multiple_of_the_learning_rate(tmp_path):
    """AdamW's first update moves every parameter with a gradient by exactly its LR; lora_A has none at step 1 (B
    starts at zero), so B's largest entry after one step is the LR times the ratio."""
    for ratio in (1.0, 4.0):
        run = train(cfg(tmp_path / str(ratio), steps=1, save_every=1, loraplus_lr_ratio=ratio), CANNY,
                    make_samples(), fresh_transformer(), {})
        lora = load_file(str(run.lora_path))
        b = max(float(v.abs().max()) for k, v in lora.items() if "lora_B" in k)
        assert b == pytest.approx(1e-3 * ratio, rel=1e-3)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        TrainConfig(modality="canny", loraplus_lr_ratio=0.5)


def test_resume_refuses_another_config_and_finished_runs(tmp_path):
    samples = make_samples(2)
    train(cfg(tmp_path, steps=4), CANNY, samples, fresh_transformer(), {})
    with pytest.raises(BadUsage, match="--no-resume"):
        train(cfg(tmp_path, steps=8, rank=8), CANNY, samples, fresh_transformer(), {})
    with pytest.raises(BadUsage, match="raise --steps"):
        train(cfg(tmp_path, steps=4), CANNY, samples, fresh_transformer(), {})
    more = train(cfg(tmp_path, steps=6), CANNY, samples, fresh_transformer(), {})  # --steps is absolute
    assert more.resumed_from == 4 and more.steps == 6


def test_empty_dataset_is_refused(tmp_path):
    with pytest.raises(BadInput, match="no samples"):
        train(cfg(tmp_path), CANNY, [], fresh_transformer(), {})


def test_config_forbids_unknown_keys():
    with pytest.raises(ValueError):
        TrainConfig(modality="canny", learning_rate=1)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    samples = make_samples(3)
    samples[2].video[:] = float("nan")  # a corrupt sample: the first step that draws it has a NaN loss
    with pytest.raises(BadInput, match="non-finite"):
        train(cfg(tmp_path, steps=20, save_every=1), CANNY, samples, fresh_transformer(), {})
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.safetensors"):
        assert all(torch.isfinite(t.float()).all() for t in load_file(str(ckpt)).values())
    assert not (tmp_path / "run" / "lora.safetensors").exists()


def test_batch_2_over_mixed_fps_trains_as_the_same_samples_one_at_a_time(tmp_path):
    """Clips of another fps have another audio length and cannot share a tensor: each group of compatible samples
    runs on its own with its own fps, weighted by its share, so batch 2 trains exactly what batch 1 with 2
    accumulation steps trains over the same samples (it crashed in `collate` before)."""
    import dataclasses

    mixed = []
    for i, s in enumerate(make_samples(4)):
        if i % 2:  # half the clips at 12 fps: twice as long, so twice the audio frames
            s = dataclasses.replace(s, fps=12.0, audio=torch.cat([s.audio, s.audio], dim=1))
        mixed.append(s)
    batched = train(cfg(tmp_path / "b2", steps=3, batch_size=2, save_every=3), CANNY, mixed, fresh_transformer(), {})
    accumulated = train(cfg(tmp_path / "acc", steps=3, batch_size=1, grad_accum=2, save_every=3), CANNY, mixed,
                        fresh_transformer(), {})
    def lora_state(run):  # the fp32 LoRA of the resume state (the .safetensors LoRA file is bf16)
        meta = json.loads((run.out / "state" / "state.json").read_text())
        return {k: v for k, v in load_file(run.out / "state" / meta["tensors"]).items() if k.startswith("lora.")}

    a, b = lora_state(batched), lora_state(accumulated)
    assert a.keys() == b.keys() and a
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    rows = [json.loads(x) for x in (tmp_path / "b2" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["samples"][0]) == 2 for r in rows)
