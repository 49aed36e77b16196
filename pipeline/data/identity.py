"""What identifies prepared data: the source's digest, the data settings and the seed. Every
invocation computes it before its stages run, so it imports nothing heavy."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from pipeline.digests import values_digest

PREPARED_FORMAT = 3  # the saved layout; part of the data digest, so a change is a cache miss


def data_settings(data_cfg: Any, seed: int) -> dict[str, Any]:
    """The settings that decide the prepared data (the path itself does not: its content does)."""
    settings = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(settings, dict)
    settings.pop("path", None)
    return {"data": settings, "seed": int(seed)}


def prepared_digest(source_digest: str, data_cfg: Any, seed: int) -> str:
    return values_digest(
        {"source": source_digest, "format": PREPARED_FORMAT, **data_settings(data_cfg, seed)}
    )
