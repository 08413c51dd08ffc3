"""One transformer pass over a canvas: the single place where training and sampling call LTX-2."""

from __future__ import annotations

import torch

from avctl.canvas import Canvas, audio_coords, video_coords
from avctl.strength import set_strength


def _absent_stream_token(
    transformer: torch.nn.Module, stream: str, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One zero token for an absent stream. The model cannot take an empty sequence, so an absent stream gets a
    single token and audio↔video attention is switched off (`isolate_modalities`): the present stream then cannot
    see it at all."""
    if stream == "video":
        tokens = torch.zeros(batch, 1, transformer.config.in_channels, device=device, dtype=dtype)
        coords = video_coords(transformer, batch, (1, 1, 1), 24.0, device)
    else:
        tokens = torch.zeros(batch, 1, transformer.config.audio_in_channels, device=device, dtype=dtype)
        coords = audio_coords(transformer, batch, 1, device)
    return tokens, coords, torch.zeros(batch, 1, device=device), torch.zeros(batch, device=device)


def predict(
    transformer: torch.nn.Module,
    canvas: Canvas,
    text_video: torch.Tensor,
    text_audio: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    sigma: torch.Tensor | None = None,
    audio_sigma: torch.Tensor | None = None,
    cross_timestep: bool | None = None,
    stg_blocks: list[int] | None = None,
    isolate_modalities: bool = False,
    forward: torch.nn.Module | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The model's velocity prediction on every token of each present stream ([B, T, C]); None for an absent one.
    Strength biases from the canvas apply inside (and stay set for a checkpointed backward).

    sigma / audio_sigma [B]: each stream's noise level as a timestep (σ·1000; 0 for clean context), what LTX-2.3's
    prompt modulation and the cross-timestep modulation read. Default: the canvas's own per-sample σ (so training and
    sampling pass the same), else the stream's largest per-token timestep.
    cross_timestep: modulate each audio↔video cross-attention by the OTHER stream's sigma (`use_cross_timestep`,
    LTX-2.3's behaviour); None = on exactly for LTX-2.3-style (`cross_attn_mod`) transformers. stg_blocks: blocks
    whose self-attention is skipped (spatio-temporal guidance's perturbed pass). isolate_modalities: no
    audio↔video attention (modality guidance's pass). forward: what the call goes through (a DDP wrapper of
    `transformer`); default `transformer`."""
    present = canvas.video if canvas.video is not None else canvas.audio
    if present is None:
        raise ValueError("a canvas needs at least one stream")
    batch, device = present.tokens.shape[0], present.tokens.device
    dtype = next(transformer.parameters()).dtype

    def stream_inputs(sc, name):
        if sc is None:
            return _absent_stream_token(transformer, name, batch, device, dtype)
        # A canvas built without build_stream has no σ: its highest per-token timestep is the noisy target's.
        sigma = sc.sigma if sc.sigma is not None else sc.timestep.amax(dim=1)
        return sc.tokens.to(dtype), sc.coords, sc.timestep, sigma

    v_tokens, v_coords, v_t, v_sigma = stream_inputs(canvas.video, "video")
    a_tokens, a_coords, a_t, a_sigma = stream_inputs(canvas.audio, "audio")
    if sigma is None:
        sigma = v_sigma
    if audio_sigma is None:
        audio_sigma = a_sigma
    if cross_timestep is None:
        cross_timestep = bool(getattr(transformer.config, "cross_attn_mod", False))
    set_strength(transformer, canvas)
    video_out, audio_out = (forward or transformer)(
        hidden_states=v_tokens,
        audio_hidden_states=a_tokens,
        encoder_hidden_states=text_video.to(dtype),
        audio_encoder_hidden_states=text_audio.to(dtype),
        timestep=v_t,
        audio_timestep=a_t,
        encoder_attention_mask=text_mask,
        audio_encoder_attention_mask=text_mask,
        video_coords=v_coords,
        audio_coords=a_coords,
        sigma=sigma,
        audio_sigma=audio_sigma,
        use_cross_timestep=cross_timestep,
        spatio_temporal_guidance_blocks=stg_blocks,
        isolate_modalities=isolate_modalities or canvas.video is None or canvas.audio is None,
        return_dict=False,
    )
    return (video_out if canvas.video is not None else None, audio_out if canvas.audio is not None else None)
