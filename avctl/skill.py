"""Chance-corrected fidelity: any (control, output) metric scored against mismatched controls.

A fidelity metric alone does not say how much of its value the control explains: a uniform-noise video has edges
near every control edge, and a slow clip's envelope correlates with itself shifted. The chance level is the same
metric between each output and controls it was NOT made from:
- several clips evaluated together (`eval --runs`): every OTHER distinct control in the set (a derangement: no
  output is ever scored against its own control, nor against another copy of it);
- a single pair, or a set made from one control: the control mirrored (video: left-right; audio: time-reversed).
  Never a small time shift, which on slow clips scores like the true control.
Skill then rescales the metric so chance is 0 and a perfect score is 1:
- higher-is-better metrics bounded by 1 (F1, correlation): skill = (m − chance) / (1 − chance);
- errors (lower is better, 0 is perfect):                 skill = (chance − m) / chance.
Skill is undefined (None) when chance is already perfect (1 for scores, 0 for errors).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from avctl.errors import AvctlError

Metric = Callable[[Any, Any], float]


def mirror_video(frames: np.ndarray) -> np.ndarray:
    """[F, H, W(, C)] frames flipped left-right."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def reverse_audio(audio: np.ndarray) -> np.ndarray:
    """[N] or [C, N] audio played backwards (the audio analogue of a mirror: same envelope statistics, other times)."""
    return np.ascontiguousarray(audio[..., ::-1])


def skill(value: float, chance: float, higher_is_better: bool = True) -> float | None:
    """The chance-corrected score (formulas in the module docstring); None when chance is already perfect."""
    if higher_is_better:
        return None if chance >= 1.0 else (value - chance) / (1.0 - chance)
    return None if chance <= 0.0 else (chance - value) / chance


def derangement(n: int) -> list[int]:
    """A permutation with no fixed point (i → i+1 mod n); n ≥ 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    return [(i + 1) % n for i in range(n)]


def mismatched(keys: Sequence[Hashable]) -> list[list[int]]:
    """For each item, one index per OTHER distinct control key (its first occurrence), so an item is never paired
    with its own control nor with another copy of it. Empty where the set holds no other control."""
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return [[j for key, j in first.items() if key != own] for own in keys]


@dataclass
class Fidelity:
    """One evaluated pair for one metric: `metric(control, output)` gave `value`; `key` names the control (two
    pairs with equal keys share a control); `mirror` makes the single-pair mismatched control."""

    metric: Metric
    control: Any
    output: Any
    value: float
    key: Hashable
    higher_is_better: bool = True
    mirror: Callable[[Any], Any] = mirror_video


def chance_levels(pairs: Sequence[Fidelity]) -> tuple[list[float | None], list[str]]:
    """The chance level of each pair (same metric for all): the mean of its metric against every other distinct
    control of the set, or against its own control mirrored when there is none. Also returns how each was formed
    ("mismatched N" / "mirrored"). A metric that cannot be computed on a mismatched pair (e.g. no trackable point)
    leaves that chance None."""
    others = mismatched([p.key for p in pairs])
    levels: list[float | None] = []
    how: list[str] = []
    for pair, partners in zip(pairs, others, strict=True):
        controls = [pairs[j].control for j in partners] or [pair.mirror(pair.control)]
        how.append(f"mismatched {len(partners)}" if partners else "mirrored")
        try:
            levels.append(float(np.mean([pair.metric(control, pair.output) for control in controls])))
        except AvctlError:
            levels.append(None)
    return levels, how


def add_skill(rows: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Fidelity]]) -> None:
    """Write `<metric>_chance` and `<metric>_skill` into each row's "metrics" (and "compared.chance" says how
    chance was formed), for every metric named in that row's `pairs` entry; an undefined one goes to
    "not_available" with the reason. Chance for a metric is formed over all rows that report it."""
    names = sorted({name for entry in pairs for name in entry})
    for name in names:
        members = [(row, entry[name]) for row, entry in zip(rows, pairs, strict=True) if name in entry]
        levels, how = chance_levels([fid for _, fid in members])
        for (row, fid), chance, formed in zip(members, levels, how, strict=True):
            row.setdefault("compared", {}).setdefault("chance", {})[name] = formed
            if chance is None:
                row["not_available"][f"{name}_skill"] = "the metric is undefined against the mismatched controls"
                continue
            row["metrics"][f"{name}_chance"] = chance
            score = skill(fid.value, chance, fid.higher_is_better)
            if score is None:
                row["not_available"][f"{name}_skill"] = (f"chance level {chance:.3g} is already perfect, so "
                                                        "the metric cannot tell this control from others")
            else:
                row["metrics"][f"{name}_skill"] = score
    for row in rows:  # each chance and skill right after its metric, so tables and sheets read them together
        metrics = row["metrics"]
        extra = {k for k in metrics if k.endswith(("_chance", "_skill")) and k.rsplit("_", 1)[0] in metrics}
        ordered: dict[str, Any] = {}
        for key, value in metrics.items():
            if key not in extra:
                ordered[key] = value
                for suffix in ("_skill", "_chance"):
                    if key + suffix in extra:
                        ordered[key + suffix] = metrics[key + suffix]
        row["metrics"] = ordered
