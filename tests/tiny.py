"""Shared tiny-model helpers for the core tests (the built-in `tiny` preset, loaded once per process)."""

from __future__ import annotations

import copy
import functools
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.lru_cache(maxsize=1)
def _backbone():
    from avctl.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


def backbone():
    """The tiny backbone (shared; do not modify its transformer — use `fresh_transformer()` for that)."""
    return _backbone()


def fresh_transformer() -> torch.nn.Module:
    """A private copy of the tiny transformer that a test may add adapters to or train."""
    return copy.deepcopy(_backbone().transformer).eval()


def text(batch: int = 1):
    emb = _backbone().encode_text(["a red ball rolls on the grass"] * batch)
    return emb.video, emb.audio, emb.mask
