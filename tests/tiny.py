"""Shared tiny-model helpers for the core tests (the built-in `tiny` preset, loaded once per process)."""

from __future__ import annotations

import copy
import functools
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.lru_cache(maxsize=1)
def _loaded():
    from avctl.backbone import load_backbone

    loaded = load_backbone("tiny", device="cpu")
    # A copy taken before any test runs on the shared backbone (generate tests leave LoRA layers on its transformer).
    return loaded, copy.deepcopy(loaded.transformer).eval()


def _backbone():
    return _loaded()[0]


def backbone():
    """The tiny backbone (shared; do not modify its transformer — use `fresh_transformer()` for that)."""
    return _backbone()


def fresh_transformer() -> torch.nn.Module:
    """A private copy of the tiny transformer, as built, that a test may add adapters to or train."""
    return copy.deepcopy(_loaded()[1]).eval()


def text(batch: int = 1):
    emb = _backbone().encode_text(["a red ball rolls on the grass"] * batch)
    return emb.video, emb.audio, emb.mask


# LTX-2.3-style options, as diffusers' LTX2VideoTransformer3DModel / LTX2TextConnectors take them: gated attention,
# the prompt (cross-attention) AdaLN fed by `sigma`, STG-ready perturbed attention, and no caption projection in
# the transformer (the connectors project per modality to the video / audio widths instead).
LTX23_TRANSFORMER = {
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "use_prompt_embeddings": False,
    "perturbed_attn": True,
}


@functools.lru_cache(maxsize=1)
def _ltx23_backbone():
    """`ltx23-tiny`: tiny's VAEs, vocoder, Gemma and tokenizer with an LTX-2.3-style transformer and connectors
    (seeded random weights)."""
    import dataclasses

    from avctl.backbone import TINY_REGISTERS

    tiny = _backbone()
    tr0, con0 = tiny.transformer, tiny.connectors
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(23)
        # The constructor, not from_config: tiny's config lists these keys as defaults, which from_config re-applies.
        base = {k: v for k, v in tr0.config.items() if not k.startswith("_")}
        transformer = type(tr0)(**{**base, **LTX23_TRANSFORMER}).eval()
        connectors = type(con0)(
            caption_channels=con0.config.caption_channels,
            text_proj_in_factor=con0.config.text_proj_in_factor,
            video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=16,  # 32 = the transformer's cross_attention_dim
            video_connector_num_layers=2,
            video_connector_num_learnable_registers=TINY_REGISTERS,
            video_gated_attn=True,
            audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=8,  # 16 = its audio_cross_attention_dim
            audio_connector_num_layers=2,
            audio_connector_num_learnable_registers=TINY_REGISTERS,
            audio_gated_attn=True,
            rope_type="split",
            per_modality_projections=True,
            video_hidden_dim=tr0.config.cross_attention_dim,
            audio_hidden_dim=tr0.config.audio_cross_attention_dim,
            proj_bias=True,
        ).eval()
    configs = {**tiny.configs, "transformer": dict(transformer.config), "connectors": dict(connectors.config)}
    return dataclasses.replace(tiny, model_id="ltx23-tiny", transformer=transformer, connectors=connectors,
                               configs=json_safe(configs))


def json_safe(data):
    import json

    return json.loads(json.dumps(data, default=list))


def ltx23_backbone():
    """The LTX-2.3-style tiny backbone (shared; use `fresh_ltx23_transformer()` to modify a transformer)."""
    return _ltx23_backbone()


def fresh_ltx23_transformer() -> torch.nn.Module:
    return copy.deepcopy(_ltx23_backbone().transformer).eval()


def ltx23_text(batch: int = 1):
    emb = _ltx23_backbone().encode_text(["a red ball rolls on the grass"] * batch)
    return emb.video, emb.audio, emb.mask
