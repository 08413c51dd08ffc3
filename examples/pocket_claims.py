"""The paper's claims, measured on the pocket model and the procedural world, with intervals (CPU, about 2 hours).

    OMP_NUM_THREADS=1 python examples/pocket_claims.py --out claims/            # everything
    OMP_NUM_THREADS=1 python examples/pocket_claims.py --out claims/ --claims layout   # one claim; reruns reuse LoRAs

Every video claim trains canny control LoRAs with avctl.train on world clips (controls drawn with --line-width px
lines, as `prepare canny --line-width` draws them) and scores held-out world clips, each sampled with --seeds noise
seeds. The score is chance-corrected edge F1 (avctl.skill): F1 of the output's own Canny edges against the held-out
clip's plain 1-px Canny edges, at the output's size, tolerance 2 px; its chance level is the same output scored
against every OTHER held-out clip's edges; skill = (F1 − chance) / (1 − chance). 0 is what an unrelated control
explains, 1 is perfect. Reference rows beside them: uniform noise, a flat grey video, the clip through the VAE, the
clip itself.

    lora        control LoRA (parallel canvas, 2× reference) at strength 1 vs the base model, same prompts and seeds
    strength    the same LoRA at strength 0, 0.25, 0.5, 0.75, 1
    layout      parallel canvas vs side-by-side (IC-LoRA style) at 1×, same steps and rank, each sampled on its layout
    downscale   reference 1×, 2×, 4× smaller (parallel, same steps): skill and training step time
                (downscale4: the 4× LoRA only, for a second process while another trains the 1× ones)
    audio       audio-intensity LoRA vs the base: envelope-correlation skill of the generated audio against the
                sonified control, the held-out clip's video kept as clean context (the modality's setting)

Each figure is a mean over clips (each clip's mean over seeds) with a 95% bootstrap interval over clips; a
comparison is a paired difference (same clips, seeds and prompts) with its own interval, called a tie when the
interval holds 0. Writes OUT/claims.json, prints a table, and plots to --plot.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avctl import pocket
from avctl.audio import sonify
from avctl.backbone import load_backbone
from avctl.errors import AvctlError
from avctl.metrics import CANNY_HIGH, CANNY_LOW, ENVELOPE_SAMPLE_RATE, audio_envelope_correlation, tolerant_f1
from avctl.modalities.audio_intensity import AUDIO_INTENSITY
from avctl.modalities.base import Clip
from avctl.modalities.canny import CANNY, CannyExtractor
from avctl.train import Sample, TrainConfig, train
from avctl.world import WorldClip, clip_seed, make_clip

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
BOOTSTRAP = 4000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ scores and intervals
def plain_edges(frames: np.ndarray) -> np.ndarray:
    """Plain 1-px Canny edges [F, H, W] (bool), as eval's edge_f1_plain draws them."""
    return np.stack([cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), CANNY_LOW, CANNY_HIGH) > 0 for f in frames])


def edge_f1(edges: np.ndarray, output: np.ndarray) -> float:
    count = min(len(edges), len(output))
    return tolerant_f1(edges[:count], plain_edges(output[:count]), 2)


def envelope_corr(control: np.ndarray, output: np.ndarray) -> float:
    try:
        return audio_envelope_correlation(control, output, ENVELOPE_SAMPLE_RATE)
    except AvctlError:  # a constant envelope (silence) has no correlation
        return float("nan")


def skill_table(metric: Callable[[Any, Any], float], controls: list[Any], outputs: list[list[Any]]) -> dict:
    """outputs[i][s]: clip i's output for seed s. Per (clip, seed): the metric against its own control, its chance
    level (mean against every other clip's control) and skill = (m − chance) / (1 − chance)."""
    n = len(controls)
    value = np.array([[metric(controls[i], o) for o in outs] for i, outs in enumerate(outputs)])
    chance = np.array([[np.nanmean([metric(controls[j], o) for j in range(n) if j != i]) for o in outs]
                       for i, outs in enumerate(outputs)])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(chance < 1.0, (value - chance) / (1.0 - chance), np.nan)
    return {"value": value.tolist(), "chance": chance.tolist(), "skill": score.tolist()}


def interval(per_clip: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean over clips and its 95% percentile bootstrap interval (clips resampled with replacement)."""
    per_clip = per_clip[np.isfinite(per_clip)]
    rng = np.random.default_rng(seed)
    means = per_clip[rng.integers(0, len(per_clip), (BOOTSTRAP, len(per_clip)))].mean(axis=1)
    return float(per_clip.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summary(table: dict, key: str = "skill") -> dict:
    per_clip = np.nanmean(np.array(table[key], dtype=float), axis=1)
    mean, lo, hi = interval(per_clip)
    return {"mean": mean, "lo": lo, "hi": hi, "clips": int(np.isfinite(per_clip).sum()),
            "samples": int(np.isfinite(np.array(table[key], dtype=float)).sum())}


def paired(a: dict, b: dict, key: str = "skill") -> dict:
    """a − b over the same clips and seeds, with its interval and a verdict."""
    diff = np.nanmean(np.array(a[key], dtype=float) - np.array(b[key], dtype=float), axis=1)
    mean, lo, hi = interval(diff)
    if max(abs(lo), abs(hi)) < 1e-3:  # float noise between equal outputs is no win
        verdict = "no difference (the outputs are the same)"
    else:
        verdict = "first ahead" if lo > 0 else "second ahead" if hi < 0 else "tie (interval holds 0)"
    return {"mean": mean, "lo": lo, "hi": hi, "verdict": verdict}


def fmt(s: dict) -> str:
    return f"{s['mean']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}]"


# ------------------------------------------------------------------------------------------------ data and training
def control_for(clip: WorldClip, downscale: int, line_width: int) -> np.ndarray:
    """The canny modality's own extractor on the clip, at the reference size."""
    size = clip.frames.shape[1] // downscale, clip.frames.shape[2] // downscale
    c = Clip(frames=clip.frames, fps=clip.fps, key="world", seed=0, reference_size=size)
    return CannyExtractor(line_width=line_width)(c).frames


def audio_control(clip: WorldClip, rate: int) -> np.ndarray:
    """The audio-intensity control (the sonified envelope) at `rate`, [2, N]."""
    wav = sonify(clip.audio, clip.sample_rate, channels=2)
    return pocket.resample(torch.from_numpy(wav)[None].float(), clip.sample_rate, rate)[0].numpy()


def at_envelope_rate(wav: np.ndarray, rate: int) -> np.ndarray:
    mono = torch.from_numpy(np.asarray(wav, dtype=np.float32)).reshape(-1, np.asarray(wav).shape[-1]).mean(0)
    return pocket.resample(mono[None], rate, ENVELOPE_SAMPLE_RATE)[0].numpy()


@torch.no_grad()
def encode_clips(backbone: Any, clips: list[WorldClip]) -> list[Sample]:
    """Video, audio and caption of each training clip, encoded once (the reference is filled per variant)."""
    out = []
    for clip in clips:
        video = backbone.encode_video(torch.from_numpy(clip.frames)[None])[0]
        wav = pocket.resample(torch.from_numpy(clip.audio)[None], clip.sample_rate, backbone.audio_sample_rate)
        audio = backbone.encode_audio(backbone.waveform_to_mel(wav))[0]
        text = backbone.encode_text([clip.caption])
        out.append(Sample(video, audio, video, text.video[0], text.audio[0], text.mask[0], clip.fps))
    return out


@torch.no_grad()
def with_references(backbone: Any, base: list[Sample], clips: list[WorldClip], modality: Any,
                    line_width: int) -> list[Sample]:
    out = []
    for sample, clip in zip(base, clips, strict=True):
        if "audio" in modality.streams:
            wav = torch.from_numpy(audio_control(clip, backbone.audio_sample_rate))[None]
            ref = backbone.encode_audio(backbone.waveform_to_mel(wav))[0]
        else:
            ref = backbone.encode_video(torch.from_numpy(control_for(clip, modality.downscale, line_width))[None])[0]
        out.append(dataclasses.replace(sample, reference=ref))
    return out


def train_lora(backbone: Any, modality: Any, samples: list[Sample], args: argparse.Namespace, steps: int,
               out: Path) -> dict:
    cfg = TrainConfig(modality=modality.name, out=out, steps=steps, rank=args.rank, lr=args.lr,
                      lr_end=args.lr / 10, batch_size=args.batch, seed=args.seed, save_every=steps,
                      layout=modality.layout)
    transformer = copy.deepcopy(backbone.transformer)
    meta = {"model_id": backbone.model_id, "config_hash": backbone.config_hash()}
    result = train(cfg, modality, samples, transformer, meta, resume=False)
    log(f"{out.name}: {result.steps} steps in {result.seconds:.0f} s, loss {np.mean(result.losses[:10]):.3f} → "
        f"{np.mean(result.losses[-10:]):.3f}")
    return {"path": str(result.lora_path), "seconds": result.seconds, "step_s": result.seconds / max(1, result.steps),
            "first_loss": float(np.mean(result.losses[:10])), "last_loss": float(np.mean(result.losses[-10:]))}


# ------------------------------------------------------------------------------------------------ sampling
def sample_video(backbone: Any, held: list[WorldClip], args: argparse.Namespace, lora_path: str | None,
                 downscale: int, strength: float) -> list[list[np.ndarray]]:
    from avctl.lora import read_lora
    from avctl.sample import LoraUse, generate

    lora = read_lora(Path(lora_path)) if lora_path else None
    outputs = []
    for i, clip in enumerate(held):
        uses = [LoraUse(lora, 1.0, control_for(clip, downscale, args.line_width))] if lora is not None else []
        outputs.append([generate(backbone, clip.caption, uses, width=clip.frames.shape[2], height=clip.frames.shape[1],
                                 frames=len(clip.frames), fps=clip.fps, strength=strength, steps=args.sample_steps,
                                 seed=1000 + 100 * s + i, preset=args.preset).frames for s in range(args.seeds)])
    return outputs


def mel_envelope(backbone: Any, mel: torch.Tensor) -> np.ndarray:
    """Log power per 10 ms mel frame [T] of a log-mel [1, C, T, bins] (channels averaged): the loudness envelope
    before the vocoder (0.99 correlated with the waveform's 20 ms RMS envelope on world clips)."""
    return torch.logsumexp(2 * mel.float(), dim=-1).mean(dim=(0, 1)).numpy()


def envelope_corr_mel(control: np.ndarray, output: np.ndarray) -> float:
    count = min(len(control), len(output))
    a, b = control[:count], output[:count]
    if a.std() < 1e-6 or b.std() < 1e-6:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def sample_audio(backbone: Any, held: list[WorldClip], args: argparse.Namespace,
                 lora_path: str | None) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    from avctl.lora import read_lora
    from avctl.sample import LoraUse, generate

    lora = read_lora(Path(lora_path)) if lora_path else None
    waves, mels = [], []
    for i, clip in enumerate(held):
        control = audio_control(clip, backbone.audio_sample_rate)
        uses = [LoraUse(lora, 1.0, control_audio=control)] if lora is not None else []
        wave_row, mel_row = [], []
        for s in range(args.seeds):
            out = generate(backbone, clip.caption, uses, width=clip.frames.shape[2], height=clip.frames.shape[1],
                           frames=len(clip.frames), fps=clip.fps, steps=args.sample_steps, seed=1000 + 100 * s + i,
                           preset=args.preset, keep_video=clip.frames)
            wave_row.append(at_envelope_rate(out.audio, out.sample_rate))
            mel_row.append(mel_envelope(backbone, backbone.decode_audio(out.final_latents["audio"])))
        waves.append(wave_row)
        mels.append(mel_row)
    return waves, mels


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pocket")
    ap.add_argument("--claims", default="lora,strength,layout,downscale,audio")
    ap.add_argument("--train-clips", type=int, default=32)
    ap.add_argument("--eval-clips", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds per held-out clip")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of every video LoRA")
    ap.add_argument("--audio-steps", type=int, default=1000, help="training steps of the audio-intensity LoRA")
    ap.add_argument("--line-width", type=int, default=3, choices=(1, 3))
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--preset", default="plain", choices=("plain", "ltx2", "ltx2.3", "distilled", "auto"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for claims.json and LoRAs (default: a temp dir)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="claims.json files of other processes' runs (same settings) to take tables and LoRAs from")
    ap.add_argument("--plot", type=Path, default=None, help="plot path (default OUT/claims.png)")
    args = ap.parse_args()
    claims = {c.strip() for c in args.claims.split(",") if c.strip()}
    out = args.out or Path(tempfile.mkdtemp(prefix="pocket-claims-"))
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "claims.json"
    # A second run into the same --out keeps the first one's tables and LoRAs.
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.setdefault("settings", {k: str(v) for k, v in vars(args).items()})
    tables: dict[str, dict] = results.setdefault("tables", {})
    loras: dict[str, dict] = results.setdefault("loras", {})
    for other in args.merge:  # runs of other claims in parallel processes (same settings)
        done = json.loads(other.read_text())
        for key in ("tables", "loras"):
            for name, value in done.get(key, {}).items():
                results[key].setdefault(name, value)

    def save() -> None:
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(results_path)

    backbone = load_backbone(args.model, device="cpu")
    size, frames = pocket.CLIP_SIZE, pocket.CLIP_FRAMES
    # World seeds 201 (train) and 202 (held out) are outside pretraining's seed-0 set.
    train_clips = [make_clip(clip_seed(201, k), size, frames) for k in range(args.train_clips)]
    held = [make_clip(clip_seed(202, k), size, frames) for k in range(args.eval_clips)]
    edges = [plain_edges(c.frames) for c in held]
    encoded: list[Sample] = []

    def lora(name: str, modality: Any, steps: int) -> str:
        if name not in loras or not Path(loras[name]["path"]).is_file():
            if not encoded:
                encoded.extend(encode_clips(backbone, train_clips))
            samples = with_references(backbone, encoded, train_clips, modality, args.line_width)
            loras[name] = train_lora(backbone, modality, samples, args, steps, out / name)
            save()
        return loras[name]["path"]

    def video_row(name: str, make: Callable[[], list[list[np.ndarray]]]) -> dict:
        if name not in tables:
            t0 = time.perf_counter()
            tables[name] = skill_table(edge_f1, edges, make())
            tables[name]["seconds"] = time.perf_counter() - t0
            save()
        log(f"{name}: skill {fmt(summary(tables[name]))}, edge F1 {summary(tables[name], 'value')['mean']:.3f}")
        return tables[name]

    def variant(layout: str, downscale: int) -> tuple[str, Any]:
        modality = dataclasses.replace(CANNY, layout=layout, downscale=downscale)
        return f"canny-{layout}-{downscale}x-{args.steps}", modality

    rng = np.random.default_rng(7)
    video_row("reference: uniform noise", lambda: [[rng.integers(0, 256, c.frames.shape, dtype=np.uint8)
                                                     for _ in range(args.seeds)] for c in held])
    video_row("reference: flat grey", lambda: [[np.full_like(c.frames, 128)] * args.seeds for c in held])
    video_row("reference: the clip through the VAE", lambda: [
        [backbone.decode_video(backbone.encode_video(torch.from_numpy(c.frames)[None]))[0].numpy()] * args.seeds
        for c in held])
    video_row("reference: the clip itself", lambda: [[c.frames] * args.seeds for c in held])

    if claims & {"lora", "strength", "downscale"}:
        video_row("base, no LoRA", lambda: sample_video(backbone, held, args, None, 2, 1.0))
        name, modality = variant("parallel", 2)
        path = lora(name, modality, args.steps)
        for s in STRENGTHS if "strength" in claims else (1.0,):
            video_row(f"{name} strength {s}", lambda s=s: sample_video(backbone, held, args, path, 2, s))
    wanted = {("parallel", 1): claims & {"layout", "downscale"}, ("side-by-side", 1): claims & {"layout"},
              ("parallel", 4): claims & {"downscale", "downscale4"}}
    if claims & {"layout", "downscale", "downscale4"}:
        for (layout, downscale), want in wanted.items():
            if not want:
                continue
            name, modality = variant(layout, downscale)
            path = lora(name, modality, args.steps)
            video_row(f"{name} strength 1.0", lambda p=path, d=downscale: sample_video(backbone, held, args, p, d, 1.0))
    if "audio" in claims:
        # Scored twice: on the waveform (what eval measures) and on the decoded log-mel's envelope, before the
        # vocoder (pocket's vocoder does not follow loudness even from a clip's true mel; docs/pocket.md).
        rate = backbone.audio_sample_rate
        controls = [at_envelope_rate(audio_control(c, rate), rate) for c in held]
        control_mels = [mel_envelope(backbone, backbone.waveform_to_mel(torch.from_numpy(audio_control(c, rate))[None]))
                        for c in held]
        source_mels = [[mel_envelope(backbone, backbone.decode_audio(backbone.encode_audio(backbone.waveform_to_mel(
            pocket.resample(torch.from_numpy(c.audio)[None], c.sample_rate, rate)))))] * args.seeds for c in held]
        if "audio (mel): the clip's own audio" not in tables:
            tables["audio (mel): the clip's own audio"] = skill_table(envelope_corr_mel, control_mels, [
                [mel_envelope(backbone, backbone.waveform_to_mel(pocket.resample(
                    torch.from_numpy(c.audio)[None], c.sample_rate, rate)))] * args.seeds for c in held])
        if "audio (mel): the clip's own audio through the audio VAE" not in tables:
            tables["audio (mel): the clip's own audio through the audio VAE"] = skill_table(
                envelope_corr_mel, control_mels, source_mels)
        for name, path in (("audio: base, no LoRA", None),
                           (f"audio-intensity-{args.audio_steps}", "train")):
            if name not in tables:
                if path == "train":
                    path = lora(name, AUDIO_INTENSITY, args.audio_steps)
                t0 = time.perf_counter()
                waves, mels = sample_audio(backbone, held, args, path)
                tables[name] = skill_table(envelope_corr, controls, waves)
                tables[name]["seconds"] = time.perf_counter() - t0
                tables[f"{name} (mel)"] = skill_table(envelope_corr_mel, control_mels, mels)
                save()
            for key in (name, f"{name} (mel)"):
                log(f"{key}: envelope skill {fmt(summary(tables[key]))}, "
                    f"correlation {summary(tables[key], 'value')['mean']:.3f}")

    results["summary"] = {name: {"skill": summary(t), "value": summary(t, "value"), "chance": summary(t, "chance")}
                          for name, t in tables.items()}
    results["comparisons"] = comparisons(tables, args)
    save()
    print_table(results)
    plot(results, args.plot or out / "claims.png", args)
    log(f"wrote {results_path}")


def comparisons(tables: dict, args: argparse.Namespace) -> dict:
    main = f"canny-parallel-2x-{args.steps}"
    pairs = {
        "LoRA (strength 1) vs base": (f"{main} strength 1.0", "base, no LoRA"),
        "strength 1 vs strength 0": (f"{main} strength 1.0", f"{main} strength 0.0"),
        "strength 0.5 vs strength 0": (f"{main} strength 0.5", f"{main} strength 0.0"),
        "strength 1 vs strength 0.5": (f"{main} strength 1.0", f"{main} strength 0.5"),
        "parallel 1x vs side-by-side 1x": (f"canny-parallel-1x-{args.steps} strength 1.0",
                                           f"canny-side-by-side-1x-{args.steps} strength 1.0"),
        "reference 1x vs 2x": (f"canny-parallel-1x-{args.steps} strength 1.0", f"{main} strength 1.0"),
        "reference 2x vs 4x": (f"{main} strength 1.0", f"canny-parallel-4x-{args.steps} strength 1.0"),
        "audio-intensity LoRA vs base": (f"audio-intensity-{args.audio_steps}", "audio: base, no LoRA"),
        "audio-intensity LoRA vs base (mel)": (f"audio-intensity-{args.audio_steps} (mel)",
                                               "audio: base, no LoRA (mel)"),
    }
    return {k: {"first": a, "second": b, **paired(tables[a], tables[b])} for k, (a, b) in pairs.items()
            if a in tables and b in tables}


def print_table(results: dict) -> None:
    print(f"{'setting':<52} {'skill, mean [95% CI]':>26} {'raw':>7} {'chance':>7} {'train s/step':>13}")
    for name, s in results["summary"].items():
        step = results["loras"].get(name.rsplit(" strength", 1)[0], {}).get("step_s")
        print(f"{name:<52} {fmt(s['skill']):>26} {s['value']['mean']:>7.3f} {s['chance']['mean']:>7.3f} "
              f"{'' if step is None else f'{step:.2f}':>13}")
    print()
    for name, c in results["comparisons"].items():
        print(f"{name:<40} {fmt(c):>26}  {c['verdict']}")


def plot(results: dict, path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]

    def bar(ax: Any, names: list[tuple[str, str]], title: str) -> None:
        names = [(label, key) for label, key in names if key in s]
        means = [s[k]["skill"]["mean"] for _, k in names]
        err = [[m - s[k]["skill"]["lo"] for m, (_, k) in zip(means, names, strict=True)],
               [s[k]["skill"]["hi"] - m for m, (_, k) in zip(means, names, strict=True)]]
        ax.bar([label for label, _ in names], means, yerr=err, capsize=4, color="C0")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=30)

    main = f"canny-parallel-2x-{args.steps}"
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    ax = axes[0]
    xs = [x for x in STRENGTHS if f"{main} strength {x}" in s]
    if xs:
        ms = [s[f"{main} strength {x}"]["skill"] for x in xs]
        ax.errorbar(xs, [m["mean"] for m in ms], yerr=[[m["mean"] - m["lo"] for m in ms],
                                                       [m["hi"] - m["mean"] for m in ms]], fmt="o-", capsize=4,
                    label="canny LoRA, parallel 2×")
    for key, colour in (("base, no LoRA", "grey"), ("reference: uniform noise", "red"),
                        ("reference: the clip through the VAE", "green")):
        if key in s:
            ax.axhline(s[key]["skill"]["mean"], color=colour, ls="--", label=key)
    ax.set(xlabel="strength", ylabel="edge-F1 skill (chance = 0)", title="strength sweep vs base")
    ax.legend(fontsize=7)
    bar(axes[1], [("parallel 1×", f"canny-parallel-1x-{args.steps} strength 1.0"),
                  ("side-by-side 1×", f"canny-side-by-side-1x-{args.steps} strength 1.0")],
        f"layout ({args.steps} steps each, same rank)")
    bar(axes[2], [("1×", f"canny-parallel-1x-{args.steps} strength 1.0"), ("2×", f"{main} strength 1.0"),
                  ("4×", f"canny-parallel-4x-{args.steps} strength 1.0")], "reference downscale")
    bar(axes[3], [("base", "audio: base, no LoRA (mel)"),
                  ("audio-intensity LoRA", f"audio-intensity-{args.audio_steps} (mel)"),
                  ("clip via audio VAE", "audio (mel): the clip's own audio through the audio VAE")],
        "audio: envelope-correlation skill (decoded mel)")
    fig.suptitle(f"pocket claims: mean over {args.eval_clips} held-out clips × {args.seeds} seeds, 95% bootstrap "
                 "interval over clips", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
