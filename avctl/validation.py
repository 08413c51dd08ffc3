"""Validation during training: a sample from the LoRA as it is now, through the sampler, with a contact sheet.
The CLI hands `make_validator`'s hook to `train.train(validate=...)`, so the loop never imports the sampler."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avctl.modalities.base import Modality


def make_validator(
    backbone: Any,
    dataset: Path,
    row: dict[str, Any],
    modality: Modality,
    out: Path,
    seed: int,
    steps: int = 20,
    texts: dict[str, dict[str, torch.Tensor]] | None = None,
    load_decoders: Callable[[], Any] | None = None,
) -> Callable[[int], None]:
    """A validation hook: generate through the sampler with the LoRA as it is now, from a manifest row's prompt and
    control, with its own seed, and write OUT/samples/step_XXXXX.mp4 + a control | output contact sheet PNG.

    For training memory: `texts` (prompt → cached embeddings, `cache.cached_prompt`: the caption and the empty
    negative prompt) stand in for the text encoder, and `load_decoders()` (a backbone holding the VAEs and vocoder)
    is called for each validation and released after it, so neither stays resident between validations. Without
    them `backbone` must hold every part."""
    from avctl import media
    from avctl.backbone import TextEmbeddings
    from avctl.errors import AvctlError
    from avctl.lora import LoraFile, lora_state_dict
    from avctl.metrics import contact_sheet
    from avctl.sample import LoraUse, generate

    target = media.read_video(dataset / row["video"])
    control = media.read_video(dataset / row["reference_video"]).frames if row.get("reference_video") else None
    control_audio = None
    if row.get("reference_audio"):
        control_audio = media.read_audio(dataset / row["reference_audio"], backbone.audio_sample_rate, 2)
    f, h, w = target.frames.shape[:3]
    caption = row.get("caption", "")

    def cached_text(prompts: list[str]) -> TextEmbeddings:
        if texts is None or len(prompts) != 1 or prompts[0] not in texts:
            raise AvctlError(f"validation has only {sorted(texts or {})!r} text-encoded, not {prompts!r}")
        return TextEmbeddings(*(texts[prompts[0]][k].to(backbone.device) for k in ("video", "audio", "mask")))

    def validate(step: int) -> None:
        tr = backbone.transformer
        bb = backbone
        if load_decoders is not None:
            parts = load_decoders()
            bb = dataclasses.replace(backbone, vae=parts.vae, audio_vae=parts.audio_vae, vocoder=parts.vocoder)
            del parts
        if texts is not None:
            bb = dataclasses.replace(bb)
            bb.encode_text = cached_text  # an instance attribute: the sampler's encode_text call lands here
        live = LoraFile(
            path=out / "lora (training)",
            state_dict={f"transformer.{k}": v for k, v in lora_state_dict(tr).items()},
            metadata={"reference_downscale_factor": str(modality.downscale)},
            avctl={"streams": list(modality.streams), "strength_direction": modality.strength_direction,
                   "layout": modality.layout},
        )
        # A LoRA trained with the other stream as clean context is validated the same way (audio-intensity: the
        # clip's own video kept at t = 0 while the audio is generated).
        keep = modality.context == "clean" and modality.trained_streams == ("audio",)
        try:
            result = generate(bb, caption, [LoraUse(live, 1.0, control, control_audio)],
                              width=w, height=h, frames=f, fps=target.fps, steps=steps, seed=seed,
                              schedule="shifted", keep_video=target.frames if keep else None,
                              first_frame=target.frames[0] if modality.first_frame_image else None)
        finally:
            if bb is not backbone:
                bb.vae = bb.audio_vae = bb.vocoder = None
            del bb
            from avctl.cache import release

            release()
        tr.set_adapters(["avctl"])  # the sampler attached its own copy; make the training adapter active again
        for n, p in tr.named_parameters():
            if ".avctl." in n and "lora_" in n:
                p.requires_grad_(True)
        folder = out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        media.write_video(folder / f"step_{step:05d}.mp4", result.frames, result.fps, audio=result.audio,
                          sample_rate=result.sample_rate)
        rows = [("control", control)] if control is not None else []
        contact_sheet(folder / f"step_{step:05d}.png", [*rows, ("output", result.frames)],
                      caption=f"step {step}: {caption}")

    return validate
