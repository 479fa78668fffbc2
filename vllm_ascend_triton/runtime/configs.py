"""Tuned-config lookup: which launch config (block sizes, multibuffer) a kernel uses for a shape.

One JSON file per (SKU, kernel), written by `vat tune` and shipped in
`vllm_ascend_triton/autotune/configs/<SKU>/<kernel>.json`; a folder named by VAT_CONFIG_DIR
(same layout) takes precedence. File format:

    {"kernel": "rope", "sku": "Ascend910B3", "source": "measured" | "modelled",
     "key_names": ["head_size", "num_tokens"],
     "configs": [{"key": {"head_size": 128, "num_tokens": 4096}, "config": {"BLOCK_T": 4}}, ...]}

Lookup takes the entry whose key is nearest (sum of |log2| distances over the numeric key
fields; non-numeric fields must match). A kernel with no file falls back to the host wrapper's
default config, with a warning once per (SKU, kernel).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_DIR_ENV = "VAT_CONFIG_DIR"
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "autotune" / "configs"


def config_path(sku: str, kernel: str, root: Path | None = None) -> Path:
    return (root or PACKAGED_CONFIG_DIR) / sku / f"{kernel}.json"


@functools.cache
def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open() as f:
        data = json.load(f)
    for field in ("kernel", "key_names", "configs"):
        if field not in data:
            raise ValueError(f"tuned-config file {path} lacks the field {field!r}")
    return data


def _distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    total = 0.0
    for name, want in a.items():
        have = b.get(name)
        if isinstance(want, int | float) and isinstance(have, int | float):
            total += abs(math.log2(max(want, 1)) - math.log2(max(have, 1)))
        elif want != have:
            return math.inf
    return total


def lookup_config(sku: str, kernel: str, key: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The tuned config nearest to `key` for (sku, kernel), or a copy of `default`."""
    roots = [Path(os.environ[CONFIG_DIR_ENV])] if os.environ.get(CONFIG_DIR_ENV) else []
    roots.append(PACKAGED_CONFIG_DIR)
    for root in roots:
        data = _load(config_path(sku, kernel, root))
        if not data or not data["configs"]:
            continue
        best = min(data["configs"], key=lambda entry: _distance(key, entry["key"]))
        if _distance(key, best["key"]) < math.inf:
            return {**default, **best["config"]}
    if any((root / sku).is_dir() for root in roots):
        _warn_default_once(sku, kernel)
    else:
        _warn_untuned_sku_once(sku)
    return dict(default)


@functools.cache
def _warn_default_once(sku: str, kernel: str) -> None:
    logger.warning("no tuned config for %s on %s; using the kernel's default config", kernel, sku)


@functools.cache
def _warn_untuned_sku_once(sku: str) -> None:
    # One line per SKU rather than one per kernel when nothing at all was tuned for it.
    logger.warning("no tuned configs for %s; kernels use their default configs (sized for its UB)", sku)
