"""Real-shape test helpers: a prepared dataset's latent cache filled with synthetic entries at a real-shape model's
widths, so a test trains `shape:L` with only the transformer loaded (encoding with shape:1's 1.2B VAE and 1B-row
Gemma embedding takes minutes and ~8 GB on a CPU; the real encoders' pass is tested on tiny)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def fill_synthetic_cache(data: Path, model: str = "shape:1", text_tokens: int = 128, seed: int = 0) -> None:
    """Write a fresh cache entry for every row of the prepared 64x64x9 dataset `data` (video latents 2x2x2, a 2x
    reference, 8 audio latent frames, `text_tokens` text embeddings), keyed as `train` would key them."""
    from avctl.backbone import load_backbone
    from avctl.cache import CACHE_FORMAT, cache_index, to_stored
    from avctl.dataset import load_manifest

    configs_only = load_backbone(model, device="cpu", components=set())
    info, rows = load_manifest(data)
    index = cache_index(configs_only, data, info, rows)
    c = configs_only.configs
    g = torch.Generator().manual_seed(seed)
    width, latent, audio = c["connectors"]["caption_channels"], c["vae"]["latent_channels"], c["audio_vae"]
    for path, key in zip(index.paths, index.keys, strict=True):
        tensors = {"video": torch.randn(latent, 2, 2, 2, generator=g), "reference": torch.randn(latent, 2, 1, 1),
                   "audio": torch.randn(audio["latent_channels"], 8, audio["mel_bins"] // 4, generator=g),
                   "text_video": torch.randn(text_tokens, width, generator=g),
                   "text_audio": torch.randn(text_tokens, width), "text_mask": torch.ones(text_tokens),
                   "fps": torch.tensor(24.0)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(to_stored(tensors), str(path), {"key": key, "format": CACHE_FORMAT})
    assert not cache_index(configs_only, data, info, rows).stale
