"""One rank of a multi-rank training run for tests/test_train_ddp.py, launched by torchrun: `train()` on the tiny
model or a real-width `shape:` preset, over in-memory samples or synthetic cache files, with the `stop_after` kill
hook. Argument: a JSON file {"model", "dtype", "strategy", "samples" ("tiny" or a cache folder), "n", "report",
"from_rank0" (ranks > 0 build the transformer on meta, as `avctl train` does under FSDP), "runs": [{"out", "steps",
"save_every", "stop_after", "strategy", "config": {TrainConfig fields}}]}. Each rank writes REPORT/rank<R>.json:
per run, its share of the transformer-block parameters and the cache files its loader read; its peak RSS."""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

import torch

from avctl.cache import release
from avctl.modalities.base import get_modality
from avctl.train import Ranks, TrainConfig, train


def block_parameters(transformer: torch.nn.Module) -> tuple[int, int]:
    """(held by this rank, whole) parameter counts of the transformer blocks."""
    from torch.distributed.tensor import DTensor

    held = whole = 0
    for p in transformer.transformer_blocks.parameters():
        whole += p.numel()
        held += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return held, whole


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    ranks = Ranks()
    canny = get_modality("canny")
    if spec["samples"] == "tiny":
        from tests.test_train import make_samples

        samples = make_samples(spec.get("n", 4))
    else:
        from avctl.cache import CachedSamples

        class Counted(CachedSamples):
            """Records which samples this rank's loader read from disk."""

            def __getitem__(self, index: int):
                reads.append(index)
                return super().__getitem__(index)

        samples = Counted(sorted(Path(spec["samples"]).glob("*.safetensors")))
    reads: list[int] = []
    report = {"rank": ranks.rank, "runs": []}
    for run in spec["runs"]:
        if spec.get("from_rank0") and not ranks.main:  # rank 0 alone reads the weights; FSDP sends the shards
            from avctl.backbone import load_backbone
            from avctl.presets import build_module

            tr = build_module("transformer", load_backbone(spec["model"], components=set()).configs["transformer"])
        elif spec["model"] == "tiny":
            from tests.tiny import fresh_transformer

            tr = fresh_transformer()
        else:
            from avctl.backbone import load_backbone

            tr = load_backbone(spec["model"], device="cpu", dtype=spec.get("dtype"),
                               components={"transformer"}).transformer
        cfg = TrainConfig(modality="canny", out=run["out"], steps=run["steps"], rank=4, lr=1e-3, lr_end=1e-4,
                          save_every=run.get("save_every", run["steps"]),
                          strategy=run.get("strategy", spec["strategy"]), **run.get("config", {}))
        reads.clear()
        result = train(cfg, canny, samples, tr, {}, stop_after=run.get("stop_after"), ranks=ranks)
        held, whole = block_parameters(tr)
        report["runs"].append({"steps": result.steps, "held": held, "whole": whole, "read": list(reads)})
        del tr, result
        gc.collect()
        release()  # the next run's model starts from a trimmed heap
    report["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(spec["report"]).mkdir(parents=True, exist_ok=True)
    (Path(spec["report"]) / f"rank{ranks.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
