"""The paper's claims, measured on the pocket model and the procedural world (CPU, minutes).

    OMP_NUM_THREADS=1 python examples/pocket_claims.py                       # all five claims
    OMP_NUM_THREADS=1 python examples/pocket_claims.py --claims lora,strength  # the main LoRA only

Claims (each a canny control LoRA trained with avctl.train on world clips, its control drawn with lines --line-width px
wide as `prepare canny --line-width` draws them (default 3, the demo's setting), scored on held-out world clips by
edge F1 of the output against the clip's plain 1-px Canny edges, avctl.metrics.edge_f1):
    lora        control LoRA (parallel, 2×, --steps) at strength 1 vs the base model (no LoRA), same prompt and seed
    strength    the same LoRA at strength 0, 0.25, 0.5, 0.75, 1
    layout      parallel canvas vs side-by-side (IC-LoRA-style) at 1×, both --compare-steps, same rank, each LoRA
                sampled on the layout it was trained on (its avctl.layout)
    downscale   reference at 1×, 2×, 4× smaller, all --compare-steps: fidelity and training step time
    lines       3-px vs 1-px Canny lines, parallel 2×, both --compare-steps

Prints a table, writes OUT/claims.json and a plot (default docs/pocket_claims.png).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avctl import pocket
from avctl.backbone import load_backbone
from avctl.metrics import edge_f1
from avctl.modalities.base import Clip
from avctl.modalities.canny import CANNY, CannyExtractor
from avctl.train import Sample, TrainConfig, train
from avctl.world import WorldClip, clip_seed, make_clip

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def control_for(clip: WorldClip, downscale: int, line_width: int = 1) -> np.ndarray:
    """The canny modality's own extractor on the clip, at the reference size."""
    size = clip.frames.shape[1] // downscale, clip.frames.shape[2] // downscale
    c = Clip(frames=clip.frames, fps=clip.fps, key="world", seed=0, reference_size=size)
    return CannyExtractor(line_width=line_width)(c).frames


@torch.no_grad()
def world_samples(backbone: Any, clips: list[WorldClip], downscale: int, line_width: int = 1,
                  base: list[Sample] | None = None) -> list[Sample]:
    """Training samples, encoded as avctl.cache does (video, its audio, the reference video, the caption). Pass
    `base` (samples of the same clips from an earlier call) to encode only the references again."""
    out = []
    for i, clip in enumerate(clips):
        ref = backbone.encode_video(torch.from_numpy(control_for(clip, downscale, line_width))[None])[0]
        if base is not None:
            out.append(dataclasses.replace(base[i], reference=ref))
            continue
        video = backbone.encode_video(torch.from_numpy(clip.frames)[None])[0]
        wav = pocket.resample(torch.from_numpy(clip.audio)[None], clip.sample_rate, backbone.audio_sample_rate)
        audio = backbone.encode_audio(backbone.waveform_to_mel(wav))[0]
        text = backbone.encode_text([clip.caption])
        out.append(Sample(video, audio, ref, text.video[0], text.audio[0], text.mask[0], clip.fps))
    return out


def variant_key(layout: str, downscale: int, steps: int, line_width: int) -> str:
    return f"{layout}-{downscale}x-{steps}" + (f"-lines{line_width}" if line_width != 1 else "")


def train_lora(backbone: Any, modality: Any, samples: list[Sample], args: argparse.Namespace, steps: int,
               out: Path) -> dict:
    cfg = TrainConfig(modality=modality.name, out=out, steps=steps, rank=args.rank, lr=args.lr,
                      lr_end=args.lr / 10, batch_size=args.batch, seed=args.seed, save_every=steps,
                      layout=modality.layout)
    transformer = copy.deepcopy(backbone.transformer)
    meta = {"model_id": backbone.model_id, "config_hash": backbone.config_hash()}
    result = train(cfg, modality, samples, transformer, meta, resume=False)
    per_step = result.seconds / max(1, result.steps)
    log(f"{modality.name} ({modality.layout}, {modality.downscale}×): {result.steps} steps in {result.seconds:.0f} s, "
        f"loss {np.mean(result.losses[:10]):.3f} → {np.mean(result.losses[-10:]):.3f}")
    return {"path": result.lora_path, "seconds": result.seconds, "step_s": per_step,
            "first_loss": float(np.mean(result.losses[:10])), "last_loss": float(np.mean(result.losses[-10:]))}


def score(backbone: Any, clips: list[WorldClip], lora_path: Path | None, downscale: int, strength: float,
          steps: int, keep: dict | None = None, line_width: int = 1, preset: str = "plain") -> tuple[float, float]:
    """Mean edge F1 over the held-out clips (output vs the clip's plain 1-px Canny control at the LoRA's reference
    size, whatever line width the LoRA was given) and the mean generation time."""
    from avctl.lora import read_lora
    from avctl.sample import LoraUse, generate

    lora = read_lora(lora_path) if lora_path is not None else None
    f1s, seconds = [], []
    for i, clip in enumerate(clips):
        uses = [LoraUse(lora, 1.0, control_for(clip, downscale, line_width))] if lora is not None else []
        t0 = time.perf_counter()
        out = generate(backbone, clip.caption, uses, width=clip.frames.shape[2], height=clip.frames.shape[1],
                       frames=len(clip.frames), fps=clip.fps, strength=strength, steps=steps, seed=1000 + i,
                       preset=preset)
        seconds.append(time.perf_counter() - t0)
        f1s.append(edge_f1(control_for(clip, downscale), out.frames))
        if keep is not None and i < 2:
            keep.setdefault(i, {})[strength] = out.frames
    return float(np.mean(f1s)), float(np.mean(seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pocket")
    ap.add_argument("--claims", default="lora,strength,layout,downscale,lines")
    ap.add_argument("--train-clips", type=int, default=32)
    ap.add_argument("--eval-clips", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500, help="training steps of the main LoRA (lora, strength)")
    ap.add_argument("--compare-steps", type=int, default=400,
                    help="training steps of each LoRA in the layout and downscale comparisons")
    ap.add_argument("--line-width", type=int, default=3, choices=(1, 3),
                    help="Canny line width of the controls (prepare canny --line-width) for every claim but `lines`")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--preset", default="plain", choices=("plain", "ltx2", "ltx2.3", "distilled", "auto"),
                    help="sampling preset (docs/sampler.md); plain = one pass per step, as the claims were measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for claims.json and LoRAs (default: a temp dir)")
    ap.add_argument("--plot", type=Path, default=Path("docs/pocket_claims.png"))
    ap.add_argument("--sheet", type=Path, default=Path("docs/pocket_strength.png"))
    args = ap.parse_args()
    claims = {c.strip() for c in args.claims.split(",") if c.strip()}
    out = args.out or Path(tempfile.mkdtemp(prefix="pocket-claims-"))
    out.mkdir(parents=True, exist_ok=True)

    backbone = load_backbone(args.model, device="cpu")
    size, frames = pocket.CLIP_SIZE, pocket.CLIP_FRAMES
    # World seeds 201 (train) and 202 (held out) are outside pretraining's seed 0 set.
    train_clips = [make_clip(clip_seed(201, k), size, frames) for k in range(args.train_clips)]
    held = [make_clip(clip_seed(202, k), size, frames) for k in range(args.eval_clips)]
    # A second run into the same --out adds claims to the first one's results and reuses its LoRAs.
    previous = out / "claims.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    results.setdefault("settings", {k: str(v) for k, v in vars(args).items()})
    width = results.setdefault("line_width", args.line_width)
    if width != args.line_width:
        raise SystemExit(f"error: {previous} was made with --line-width {width}; use that or another --out")
    # Runs from before presets sampled as plain.
    if results.setdefault("sample_preset", "plain" if previous.is_file() else args.preset) != args.preset:
        raise SystemExit(f"error: {previous} was sampled with --preset {results['sample_preset']}; use that or "
                         "another --out")

    encoded: list[Sample] = []  # the training clips' video, audio and caption, encoded once for all variants

    def variant(layout: str, downscale: int, steps: int, line_width: int) -> dict:
        key = variant_key(layout, downscale, steps, line_width)
        if key in results and Path(results[key]["path"]).is_file():
            results[key]["path"] = Path(results[key]["path"])
        else:
            modality = dataclasses.replace(CANNY, layout=layout, downscale=downscale)
            samples = world_samples(backbone, train_clips, downscale, line_width, base=encoded or None)
            encoded[:] = encoded or samples
            results[key] = train_lora(backbone, modality, samples, args, steps, out / key)
        return results[key]

    # Upper bound: the held-out clips themselves through the VAE.
    recon = []
    for clip in held:
        rec = backbone.decode_video(backbone.encode_video(torch.from_numpy(clip.frames)[None]))[0].numpy()
        recon.append(edge_f1(control_for(clip, 2), rec))
    results["vae_reconstruction_f1"] = float(np.mean(recon))
    if "base" not in results:
        base_f1, base_s = score(backbone, held, None, 2, 1.0, args.sample_steps, preset=args.preset)
        results["base"] = {"f1": base_f1, "gen_s": base_s}
    log(f"VAE-reconstruction edge F1 {results['vae_reconstruction_f1']:.3f}; base (no LoRA) "
        f"{results['base']['f1']:.3f}")

    kept: dict = {}
    if claims & {"lora", "strength"}:
        main_lora = variant("parallel", 2, args.steps, width)
        results["main"] = variant_key("parallel", 2, args.steps, width)
        sweep = {}
        for s in STRENGTHS if "strength" in claims else (0.0, 1.0):
            sweep[s], _ = score(backbone, held, main_lora["path"], 2, s, args.sample_steps, keep=kept,
                                line_width=width, preset=args.preset)
            log(f"parallel 2× strength {s}: edge F1 {sweep[s]:.3f}")
        results["strength"] = {str(k): v for k, v in sweep.items()}
    if "layout" in claims:
        for layout in ("parallel", "side-by-side"):
            v = variant(layout, 1, args.compare_steps, width)
            # generate samples each LoRA on its avctl.layout; scores kept from before it did were all parallel
            if "f1" not in v or v.get("sampled_layout") != layout:
                v["f1"], v["gen_s"] = score(backbone, held, v["path"], 1, 1.0, args.sample_steps, line_width=width,
                                            preset=args.preset)
                v["sampled_layout"] = layout
            log(f"{layout} 1×, {width}-px lines, {args.compare_steps} steps: edge F1 {v['f1']:.3f}")
    if "downscale" in claims:
        results["compare_steps"] = args.compare_steps
        for s in (1, 2, 4):
            v = variant("parallel", s, args.compare_steps, width)
            if "f1" not in v:
                v["f1"], v["gen_s"] = score(backbone, held, v["path"], s, 1.0, args.sample_steps, line_width=width,
                                            preset=args.preset)
            log(f"parallel {s}×: edge F1 {v['f1']:.3f}, train {v['step_s']:.2f} s/step, generate {v['gen_s']:.1f} s")
    if "lines" in claims:
        results["compare_steps"] = args.compare_steps
        for w in (1, 3):
            v = variant("parallel", 2, args.compare_steps, w)
            if "f1" not in v:
                v["f1"], v["gen_s"] = score(backbone, held, v["path"], 2, 1.0, args.sample_steps, line_width=w,
                                            preset=args.preset)
            log(f"parallel 2×, {w}-px lines: edge F1 {v['f1']:.3f} (against 1-px Canny)")

    for v in results.values():
        if isinstance(v, dict) and "path" in v:
            v["path"] = str(v["path"])
    (out / "claims.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    plot(results, args.plot)
    if kept:
        sheet(held, kept, args.sheet, results.get("strength", {}), width)
    log(f"wrote {out / 'claims.json'}, {args.plot}")


def print_table(results: dict) -> None:
    rows = [("VAE reconstruction (upper bound)", results["vae_reconstruction_f1"], "", ""),
            ("base, no LoRA", results["base"]["f1"], "", f"{results['base']['gen_s']:.1f}")]
    main = results.get(results.get("main", ""), {})
    for s, f1 in results.get("strength", {}).items():
        rows.append((f"canny LoRA, {results['main']}, strength {s}", f1, f"{main.get('step_s', 0):.2f}", ""))
    for key, v in results.items():  # the comparisons' LoRAs, in the order they were run
        if isinstance(v, dict) and "f1" in v and "step_s" in v:
            rows.append((f"canny LoRA, {key}, strength 1", v["f1"], f"{v['step_s']:.2f}", f"{v['gen_s']:.1f}"))
    print(f"{'setting':<54} {'edge F1':>8} {'train s/step':>13} {'gen s':>7}")
    for name, f1, step_s, gen_s in rows:
        print(f"{name:<54} {f1:>8.3f} {step_s:>13} {gen_s:>7}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = results.get("line_width", 1)
    n = results.get("compare_steps")

    def f1_of(layout: str, downscale: int, line_width: int = width) -> float | None:
        return results.get(variant_key(layout, downscale, n, line_width), {}).get("f1")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    if "strength" in results:
        xs = [float(k) for k in results["strength"]]
        ax.plot(xs, list(results["strength"].values()), "o-", label=f"canny LoRA ({results['main']})")
    ax.axhline(results["base"]["f1"], color="grey", ls="--", label="base, no LoRA")
    ax.axhline(results["vae_reconstruction_f1"], color="green", ls=":", label="VAE reconstruction")
    ax.set(xlabel="strength", ylabel="edge F1 (held-out)", title="LoRA vs base; strength sweep", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[1]
    bars = [(label, f1_of(layout, 1), colour) for layout, label, colour in
            (("parallel", "parallel 1×", "C0"), ("side-by-side", "side-by-side 1×", "C1"))]
    bars = [b for b in bars if b[1] is not None]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.axhline(results["base"]["f1"], color="grey", ls="--")
    ax.set(ylabel="edge F1", title=f"parallel vs side-by-side ({n} steps, same rank, {width}-px lines)",
           ylim=(0, 1))
    ax.title.set_fontsize(9)
    ax = axes[2]
    scales = [s for s in (1, 2, 4) if f1_of("parallel", s) is not None]
    if scales:
        ax.plot(scales, [f1_of("parallel", s) for s in scales], "o-", label=f"edge F1, {width}-px lines")
        ax.set(xlabel="reference downscale", ylabel="edge F1", title=f"reference size ({n} steps each)",
               ylim=(0, 1))
        other = 1 if width == 3 else 3
        if f1_of("parallel", 2, other) is not None:
            ax.plot([2], [f1_of("parallel", 2, other)], "D", color="C2", label=f"2×, {other}-px lines")
        ax.legend(fontsize=8, loc="upper center")
        twin = ax.twinx()
        twin.plot(scales, [results[variant_key("parallel", s, n, width)]["step_s"] for s in scales], "s--",
                  color="C3", label="train s/step")
        twin.set_ylabel("train s/step")
        ax.set_xticks(scales)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def sheet(held: list[WorldClip], kept: dict, path: Path, f1: dict[str, float], line_width: int) -> None:
    from avctl.metrics import contact_sheet

    rows = []
    for i, by_strength in kept.items():
        rows.append((f"held-out clip {i}", held[i].frames))
        rows.append(("its canny control", control_for(held[i], 2, line_width)))
        for s, frames in sorted(by_strength.items()):
            rows.append((f"canny LoRA, strength {s}", frames))
    scores = ", ".join(f"{float(s):g}: {v:.2f}" for s, v in f1.items())
    contact_sheet(path, rows, n_columns=6, tile_height=80,
                  caption=f"pocket + canny LoRA on held-out world clips, same prompt and seed in every row. Mean edge "
                          f"F1 over the held-out set by strength: {scores}")


if __name__ == "__main__":
    main()
