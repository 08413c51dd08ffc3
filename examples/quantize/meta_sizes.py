"""Weight bytes of the full LTX-2 transformer and Gemma 3 12B, bf16 against --quantize int8 / --text-encoder-8bit,
counted on the meta device (no memory, no download). Usage: python examples/quantize/meta_sizes.py

The transformer is diffusers' LTX2VideoTransformer3DModel with its default config (LTX-2's 48 blocks at 4096 / 2048
width); Gemma 3 12B's sizes are those of its published config (hidden 3840, FF 15360, 48 layers, 16 heads, 8 KV
heads of 256; SigLIP vision tower 1152 wide, 27 layers)."""

import torch

import avctl  # noqa: F401  (quiets torchao's import notices)
from avctl.quantize import quantize_text_encoder, quantize_transformer

if __name__ == "__main__":
    from diffusers import LTX2VideoTransformer3DModel
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    for mode in ("int8", "fp8"):
        with torch.device("meta"):
            transformer = LTX2VideoTransformer3DModel().to(torch.bfloat16)
        n = sum(p.numel() for p in transformer.parameters())
        print(f"transformer ({n / 1e9:.2f}B params) {quantize_transformer(transformer, mode).summary()}")
    config = Gemma3Config(
        text_config={"vocab_size": 262208, "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                     "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256},
        vision_config={"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                       "num_attention_heads": 16, "image_size": 896, "patch_size": 14},
        mm_tokens_per_image=256,
    )
    with torch.device("meta"):
        gemma = Gemma3ForConditionalGeneration(config).to(torch.bfloat16)
    n = sum(p.numel() for p in gemma.parameters())
    print(f"Gemma 3 12B ({n / 1e9:.2f}B params) {quantize_text_encoder(gemma).summary()}")
