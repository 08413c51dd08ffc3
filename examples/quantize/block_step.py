"""One LoRA training step on ONE real-width LTX-2 block on CPU (diffusers' default config, num_layers=1, random bf16
weights): resident memory and step time for a bf16, int8 or fp8 frozen base.
Usage: OMP_NUM_THREADS=1 python examples/quantize/block_step.py bf16|int8|fp8
Set MALLOC_MMAP_THRESHOLD_=1000000 to have glibc return freed tensors at once (else RSS keeps freed memory)."""

import ctypes
import sys
import time

import torch

import avctl  # noqa: F401  (quiets torchao's import notices)
from avctl.canvas import audio_coords, video_coords
from avctl.lora import add_lora
from avctl.quantize import adapters_to_fp32, module_bytes, quantize_transformer


def rss(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 2**20
    return float("nan")


if __name__ == "__main__":
    from diffusers import LTX2VideoTransformer3DModel

    mode = sys.argv[1]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    transformer = LTX2VideoTransformer3DModel(num_layers=1).eval()
    torch.set_default_dtype(torch.float32)
    if mode != "bf16":
        quantize_transformer(transformer, mode)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    add_lora(transformer, ["V.SA", "V.CA", "V.FF"], 32)
    adapters_to_fp32(transformer)
    f, h, w, a = 4, 16, 16, 64  # 1024 video + 64 audio tokens
    cpu = torch.device("cpu")
    text = torch.randn(1, 128, 3840, dtype=torch.bfloat16)
    kwargs = dict(
        hidden_states=torch.randn(1, f * h * w, 128, dtype=torch.bfloat16),
        audio_hidden_states=torch.randn(1, a, 128, dtype=torch.bfloat16),
        encoder_hidden_states=text, audio_encoder_hidden_states=text,
        timestep=torch.full((1, f * h * w), 500.0), audio_timestep=torch.full((1, a), 500.0),
        encoder_attention_mask=torch.ones(1, 128), audio_encoder_attention_mask=torch.ones(1, 128),
        video_coords=video_coords(transformer, 1, (f, h, w), 24.0, cpu),
        audio_coords=audio_coords(transformer, 1, a, cpu),
        return_dict=False,
    )
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM)
    before = rss()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        video, audio = transformer(**kwargs)
        (video.float().pow(2).mean() + audio.float().pow(2).mean()).backward()
        times.append(time.perf_counter() - t)
    print(f"{mode}: weights {module_bytes(transformer) / 2**30:.2f} GiB, RSS before the steps {before:.2f} GiB, "
          f"peak {rss('VmHWM'):.2f} GiB, forward+backward {min(times[1:]):.2f} s")
