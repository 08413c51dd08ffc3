"""A modality's extractor, built from its factory with the `--weights` / `--backend` / extra options a command
was given. `prepare` and `eval` both build extractors through here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avctl.errors import BadUsage
from avctl.modalities.base import Extractor, Modality, weight_places


def _takes_options(factory: Callable[..., Extractor]) -> bool:
    """Whether the factory accepts `weights=` and `backend=` keyword arguments."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters and parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY
               for name in ("weights", "backend"))


def resolve_weights(weights: Path | None, backend: str | None) -> Path | None:
    """The weights to hand an extractor: `--weights DIR` (which must exist), else `$AVCTL_HOME/weights/<backend>`
    when that folder exists, else None (the extractor then reads the hub cache itself, never downloading)."""
    if weights is not None:
        if not Path(weights).exists():
            raise BadUsage(f"--weights {weights}: no such file or folder; point it at the extractor's weights")
        return Path(weights)
    if not backend:
        return None
    return next((place for place in weight_places(None, backend) if place.is_dir()), None)


def build_extractor(modality: Modality, weights: Path | None = None, backend: str | None = None,
                    options: dict[str, Any] | None = None) -> Extractor:
    """The modality's extractor: `factory(weights=..., backend=...)` when its factory takes those keywords (weights
    resolved by `resolve_weights`), else `factory()`, refusing --weights / --backend it could not honour.
    `options` are extra keyword arguments for factories that declare them (e.g. who-is-talking's `speakers`)."""
    factory = modality.extractor
    if factory is None:
        raise BadUsage(f"{modality.name!r} has no extractor ({modality.extractor_note})")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if options:
        try:
            parameters = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        refused = [k for k in options if k not in parameters]
        if refused:
            raise BadUsage(f"--{refused[0].replace('_', '-')}: the {modality.name!r} extractor takes no such option")
        if not _takes_options(factory):
            return factory(**options)
    if _takes_options(factory):
        default = getattr(factory, "backend", None)
        chosen = backend or (default if isinstance(default, str) else None)
        return factory(weights=resolve_weights(weights, chosen), backend=backend, **options)
    if weights is not None or backend is not None:
        given = " and ".join(flag for flag, value in (("--weights", weights), ("--backend", backend))
                             if value is not None)
        raise BadUsage(f"{given}: the {modality.name!r} extractor takes no weights or backend choice; drop {given}")
    return factory()
