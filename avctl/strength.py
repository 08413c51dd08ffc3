"""Attention strength: how much target tokens listen to a reference, at inference, with no retraining.

The AVControl definition: strength w scales the attention weight from target queries to reference keys. We add
log(w) to those logits (w = 0 → −inf), so exp(s + log w) = w·exp(s): the reference's unnormalised weight is
multiplied by w before the softmax renormalises. This is a true scale — unlike diffusers'
`video_self_attention_mask`, which maps m ∈ [0, 1] to (1 − m)·−10000 and so turns any fractional strength into a
hard mask (we never use it).

Where: every attention in which target queries meet reference keys — video self-attention (`attn1`), audio
self-attention (`audio_attn1`) and both audio↔video cross-attentions (`audio_to_video_attn`: video queries, audio
keys; `video_to_audio_attn`: audio queries, video keys). Text cross-attention has no reference keys.

Direction: "target" (default, the paper's definition) biases only target-query rows. "symmetric" (ltx-core's and
ComfyUI's behaviour) also scales reference queries → target keys in self-attention.

Several references on one canvas are separate groups: a reference query never sees another group's keys.

Memory stays O(tokens): the query rows are split into blocks (target rows, each reference group's rows), each block
is one SDPA call with a bias broadcast over heads and query rows — [B, 1, 1, T_keys] — never a per-head or full
T×T tensor. (The one exception is the opt-in symmetric direction with a per-token map, whose reference rows need a
[B, 1, T_ref, T_keys] bias.) At w = 1 everywhere with a single group no bias is built at all and the stock
processor's single SDPA call runs (the fast path, flash kernels allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx2 import (
    LTX2AudioVideoAttnProcessor,
    LTX2PerturbedAttnProcessor,
    apply_interleaved_rotary_emb,
    apply_split_rotary_emb,
)

from avctl.canvas import Canvas, Segment, StreamCanvas

# (module attribute on each block, query stream, key stream)
STRENGTH_ATTENTIONS = (
    ("attn1", "video", "video"),
    ("audio_attn1", "audio", "audio"),
    ("audio_to_video_attn", "video", "audio"),
    ("video_to_audio_attn", "audio", "video"),
)


@dataclass
class RowBlock:
    """Query rows [start, end) attend with `bias` added to their logits (None = plain attention)."""

    start: int
    end: int
    bias: torch.Tensor | None  # [B, 1, 1 or rows, T_keys] log-space, broadcast over heads


class StrengthState:
    """Side channel shared by all strength processors of one model: the row blocks for each (query, key) stream
    pair of the canvas being run, or None for the fast path. Stays set through backward, because gradient
    checkpointing recomputes the blocks then."""

    def __init__(self) -> None:
        self.plans: dict[tuple[str, str], list[RowBlock] | None] = {}


def _log_weight(strength: float | torch.Tensor, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """[B, n] log-space bias for a reference segment of n tokens: log(w), −inf at w = 0."""
    if isinstance(strength, torch.Tensor):
        w = strength.to(device=device, dtype=torch.float32)
    else:
        w = torch.full((batch, n), float(strength), device=device)
    return torch.log(w)  # log(0) = −inf: those keys are removed exactly


def _is_unit(strength: float | torch.Tensor) -> bool:
    if isinstance(strength, torch.Tensor):
        return bool((strength == 1).all())
    return float(strength) == 1.0


def _plan_pair(q: StreamCanvas, k: StreamCanvas, symmetric: bool, same_stream: bool) -> list[RowBlock] | None:
    b = q.tokens.shape[0]
    device = q.tokens.device
    t_keys = k.tokens.shape[1]
    k_refs = [s for s in k.segments if s.group is not None]
    q_refs = [s for s in q.segments if s.group is not None]
    blocks: list[RowBlock] = []

    # Target query rows: log(w) on each reference's keys.
    target_bias = None
    if any(not _is_unit(s.strength) for s in k_refs):
        target_bias = torch.zeros(b, t_keys, device=device)
        for s in k_refs:
            target_bias[:, s.start : s.end] = _log_weight(s.strength, b, s.end - s.start, device)
        target_bias = target_bias[:, None, None, :]  # [B, 1, 1, T_keys]
    blocks.append(RowBlock(0, q.target_len, target_bias))

    # Reference query rows, one block per reference: other groups' keys removed; symmetric scaling on target keys.
    groups = {s.group for s in q_refs} | {s.group for s in k_refs}
    for seg in q_refs:
        bias = _reference_row_bias(seg, k, b, device, symmetric and same_stream, len(groups) > 1)
        blocks.append(RowBlock(seg.start, seg.end, bias))

    if all(blk.bias is None for blk in blocks):
        return None  # fast path: one plain SDPA call
    return blocks


def _reference_row_bias(
    seg: Segment, k: StreamCanvas, b: int, device: torch.device, symmetric: bool, isolate_groups: bool
) -> torch.Tensor | None:
    t_keys = k.tokens.shape[1]
    scale_targets = symmetric and not _is_unit(seg.strength)
    if not (scale_targets or isolate_groups):
        return None
    key_bias = torch.zeros(b, t_keys, device=device)
    if isolate_groups:
        for other in k.segments:
            if other.group is not None and other.group != seg.group:
                key_bias[:, other.start : other.end] = float("-inf")
    if not scale_targets:
        return key_bias[:, None, None, :]  # [B, 1, 1, T_keys]
    n_rows = seg.end - seg.start
    row_log_w = _log_weight(seg.strength, b, n_rows, device)  # [B, rows]
    if not isinstance(seg.strength, torch.Tensor):
        key_bias[:, : k.target_len] = row_log_w[:, :1]  # one value for all rows: stays [B, 1, 1, T_keys]
        return key_bias[:, None, None, :]
    # Per-token map in symmetric mode: each reference query row has its own weight on the target keys.
    bias = key_bias[:, None, None, :].expand(b, 1, n_rows, t_keys).clone()  # [B, 1, rows, T_keys]
    bias[..., : k.target_len] = row_log_w[:, None, :, None]
    return bias


def plan_strength(canvas: Canvas) -> dict[tuple[str, str], list[RowBlock] | None]:
    """Row blocks for every attention where target queries can meet reference keys."""
    plans: dict[tuple[str, str], list[RowBlock] | None] = {}
    symmetric = canvas.direction == "symmetric"
    for _, qs, ks in STRENGTH_ATTENTIONS:
        q, k = canvas.stream(qs), canvas.stream(ks)
        if q is None or k is None:
            plans[(qs, ks)] = None
            continue
        plans[(qs, ks)] = _plan_pair(q, k, symmetric, same_stream=qs == ks)
    return plans


class StrengthAttnProcessor(LTX2AudioVideoAttnProcessor):
    """diffusers' LTX-2 attention processor plus the strength bias. With no plan it defers to the stock
    processor, so the fast path is the stock computation. Gated attention (`to_gate_logits`, LTX-2.3) is honoured.

    Spatio-temporal guidance (STG): on `perturbed_attn` models the STG blocks hand their self-attentions a
    `perturbation_mask` (0 = perturbed sample); as in diffusers' `LTX2PerturbedAttnProcessor` a perturbed sample's
    attention output is its value projection (attention skipped), so strength has nothing to act on there."""

    def __init__(self, state: StrengthState, query_stream: str, key_stream: str) -> None:
        super().__init__()
        self.state = state
        self.pair = (query_stream, key_stream)
        self._perturbed = LTX2PerturbedAttnProcessor()

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        perturbation_mask: torch.Tensor | None = None,
        all_perturbed: bool | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if perturbation_mask is not None:
            if all_perturbed is None:
                all_perturbed = bool(torch.all(perturbation_mask == 0))
            if all_perturbed or self.state.plans.get(self.pair) is None or attention_mask is not None:
                self._perturbed._attention_backend = self._attention_backend
                self._perturbed._parallel_config = self._parallel_config
                return self._perturbed(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                       key_rotary_emb, perturbation_mask, all_perturbed)
            # Some samples perturbed, some not, with strength biases: attend with strength, then blend in the
            # value projection where perturbed. The output projection is affine, so blending after it equals the
            # perturbed processor's blend before it.
            out = self(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb, key_rotary_emb)
            skipped = self._perturbed(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                      key_rotary_emb, torch.zeros_like(perturbation_mask), True)
            return torch.lerp(skipped, out, perturbation_mask.to(out.dtype))
        blocks = self.state.plans.get(self.pair)
        if blocks is not None and blocks[-1].end != hidden_states.shape[1]:
            raise RuntimeError("the strength plan is for another canvas; call set_strength() before this forward")
        if blocks is None or attention_mask is not None:
            # No strength work (or someone passed diffusers' own mask, which we leave to the stock path).
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                    key_rotary_emb)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(context))
        value = attn.to_v(context)
        if query_rotary_emb is not None:
            rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
            query = rotate(query, query_rotary_emb)
            key = rotate(key, key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))  # [B, Tq, H, D]
        key = key.unflatten(2, (attn.heads, -1))  # [B, Tk, H, D]
        value = value.unflatten(2, (attn.heads, -1))

        outputs = []
        for blk in blocks:
            bias = None if blk.bias is None else blk.bias.to(query.dtype)
            outputs.append(
                dispatch_attention_fn(
                    query[:, blk.start : blk.end],
                    key,
                    value,
                    attn_mask=bias,
                    dropout_p=0.0,
                    is_causal=False,
                    backend=self._attention_backend,
                    parallel_config=self._parallel_config,
                )
            )
        out = torch.cat(outputs, dim=1).flatten(2, 3).to(query.dtype)  # [B, Tq, H·D]
        return self._output(attn, out, gate_logits)

    @staticmethod
    def _output(attn: torch.nn.Module, out: torch.Tensor, gate_logits: torch.Tensor | None) -> torch.Tensor:
        if gate_logits is not None:
            gates = 2.0 * torch.sigmoid(gate_logits)  # [B, Tq, H], as the stock processor
            out = (out.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


def install_strength(transformer: torch.nn.Module) -> StrengthState:
    """Put strength processors on every attention that can see reference keys (idempotent). Returns the shared
    state object the canvas runner fills before each forward."""
    existing = getattr(transformer, "_avctl_strength_state", None)
    if existing is not None:
        return existing
    state = StrengthState()
    for block in transformer.transformer_blocks:
        for attr, qs, ks in STRENGTH_ATTENTIONS:
            getattr(block, attr).set_processor(StrengthAttnProcessor(state, qs, ks))
    transformer._avctl_strength_state = state
    return state


def clear_strength(transformer: torch.nn.Module) -> None:
    """Back to plain attention (for a forward that is not on an avctl canvas)."""
    state = getattr(transformer, "_avctl_strength_state", None)
    if state is not None:
        state.plans = {}


def set_strength(transformer: torch.nn.Module, canvas: Canvas) -> StrengthState:
    """Make the transformer's attentions apply `canvas`'s strengths from now on. The plan stays set after the
    forward (until the next call) because gradient checkpointing recomputes the blocks during backward."""
    state = install_strength(transformer)
    state.plans = plan_strength(canvas)
    return state
