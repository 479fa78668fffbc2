"""Tuned-config lookup: which launch config (block sizes, `multibuffer`) a kernel uses for a shape.

Files
-----
`vat tune` writes one JSON file per (SKU, kernel, shape key), like vLLM's fused-MoE configs:

    <folder>/<SKU>/<kernel>/<shape key>.json
    e.g. Ascend910B3/rope/head_size=128,num_heads=32,rot_dim=128.json

    {"format": 2, "kernel": "rope", "sku": "Ascend910B3", "method": "model" | "measured",
     "triton_ascend": "3.2.0", "date": "2026-11-29T22:40:00Z",
     "shape_key": {"head_size": 128, "num_heads": 32, "rot_dim": 128},
     "configs": [{"key": {"head_size": 128, "num_heads": 32, "rot_dim": 128, "num_tokens": 64},
                  "config": {"BLOCK_H": 32}, ...}, ...]}

The shape key holds the key fields that do not vary with the batch (everything but token counts);
the entries inside hold the full keys, one per tuned batch size. A dtype in a key is spelled
without the `torch.` prefix (`"float16"`, :func:`dtype_key`), in the entries and the file names.

Folders, in order: `VAT_TUNED_CONFIG_FOLDER` (the user's), then the configs shipped in
`vllm_ascend_triton/runtime/tuned_configs/`. The variable is read once, at the first lookup
(`clear_caches()` reads it again).

Lookup
------
`lookup_config(sku, kernel, key, default)` returns `{**default, **entry["config"]}` for the best
entry, or a copy of `default`. Candidates are the entries whose key matches: fields that are
booleans or strings must be equal, numbers are compared by log distance (sum over the numeric
fields of |log2(a) - log2(b)|); a field missing on one side does not match. The best entry is the
first by (folder order: the user's first; distance: nearest first; method: measured before model).
Files are read once per process and folder set (then kept in memory: no file-system call per
launch; `clear_caches()` after writing files). A corrupt file is reported once (a warning naming
it) and skipped. When nothing matches, one warning per (SKU, kernel); a SKU with no tuned configs
at all gets one warning for all its kernels.

Tuning hooks
------------
`override_configs({kernel: config})` makes `lookup_config` return `{**default, **config}` for
those kernels (and, with `ignore_files=True`, the defaults for every other kernel), and
`record_lookups()` collects every lookup made inside the block. The tuner applies candidate
configs through the host APIs themselves this way, in a dry run.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vllm_ascend_triton.runtime.device import planning_sku

logger = logging.getLogger(__name__)

TUNED_CONFIG_FOLDER_ENV = "VAT_TUNED_CONFIG_FOLDER"
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "tuned_configs"

FORMAT_VERSION = 2
METHODS = ("measured", "model")  # best first


@dataclasses.dataclass(frozen=True)
class TunedEntry:
    key: Mapping[str, Any]
    config: Mapping[str, Any]
    method: str  # "measured" | "model"
    path: str  # the file it came from
    folder_rank: int  # 0 = the first folder searched


@dataclasses.dataclass(frozen=True)
class ConfigLookup:
    """One call of `lookup_config`, as `record_lookups` sees it."""

    sku: str
    kernel: str
    key: Mapping[str, Any]
    default: Mapping[str, Any]
    config: Mapping[str, Any]  # what the caller got (the very dict: specs built from it can be matched)
    source: str  # "override", "default", or "<method>:<file>"


# ---------------------------------------------------------------------------------------------------
# Folders and file names


_folders: list[tuple[Path, ...]] = []  # [folders] once resolved


def config_folders() -> tuple[Path, ...]:
    """Folders searched, first wins: the user's (``VAT_TUNED_CONFIG_FOLDER``), then the shipped
    configs. Resolved once per process (``clear_caches()`` resolves them again)."""
    if not _folders:
        user = os.environ.get(TUNED_CONFIG_FOLDER_ENV)
        folders = [Path(user)] if user else []
        folders.append(PACKAGED_CONFIG_DIR)
        _folders.append(tuple(dict.fromkeys(folders)))
    return _folders[0]


def dtype_key(dtype: Any) -> str:
    """The one spelling of a dtype in config keys and file names: ``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def _slug(value: Any) -> str:
    text = str(value).removeprefix("torch.")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def shape_file_name(shape_key: Mapping[str, Any]) -> str:
    """File name of a shape key: `name=value,...json` sorted by name (`default.json` if empty)."""
    if not shape_key:
        return "default.json"
    return ",".join(f"{_slug(k)}={_slug(v)}" for k, v in sorted(shape_key.items())) + ".json"


def config_file_path(root: Path, sku: str, kernel: str, shape_key: Mapping[str, Any]) -> Path:
    return Path(root) / sku / kernel / shape_file_name(shape_key)


# ---------------------------------------------------------------------------------------------------
# Reading files


class CorruptConfigError(ValueError):
    """A tuned-config file that is not valid JSON or lacks required fields."""


def parse_config_document(data: Any, path: str = "<memory>") -> tuple[str, list[dict[str, Any]]]:
    """(method, entries) of a config document; CorruptConfigError when it is not one."""
    if not isinstance(data, dict):
        raise CorruptConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for field in ("kernel", "configs"):
        if field not in data:
            raise CorruptConfigError(f"{path}: lacks the field {field!r}")
    method = str(data.get("method", "model"))
    if method not in METHODS:
        raise CorruptConfigError(f"{path}: unknown method {data.get('method')!r}; expected one of {METHODS}")
    entries = data["configs"]
    if not isinstance(entries, list):
        raise CorruptConfigError(f"{path}: 'configs' must be a list")
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("key"), dict)
            or not isinstance(entry.get("config"), dict)
        ):
            raise CorruptConfigError(
                f"{path}: configs[{i}] must be an object with 'key' and 'config' objects"
            )
    return method, entries


def _kernel_files(root: Path, sku: str, kernel: str) -> list[Path]:
    folder = root / sku / kernel
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


@functools.cache
def _warn_corrupt_once(path: str, reason: str) -> None:
    logger.warning("ignoring the tuned-config file %s: %s", path, reason)


_lock = threading.Lock()
_tables: dict[tuple[tuple[Path, ...], str, str], tuple[TunedEntry, ...]] = {}
_sku_known: dict[tuple[tuple[Path, ...], str], bool] = {}


def _load_table(folders: tuple[Path, ...], sku: str, kernel: str) -> tuple[TunedEntry, ...]:
    entries: list[TunedEntry] = []
    for rank, root in enumerate(folders):
        for path in _kernel_files(root, sku, kernel):
            try:
                method, raw = parse_config_document(json.loads(path.read_text()), str(path))
            except (OSError, ValueError) as exc:  # json.JSONDecodeError and CorruptConfigError
                _warn_corrupt_once(str(path), str(exc))
                continue
            for e in raw:  # an entry may carry its own method (a file mixing measured and modelled)
                entry_method = str(e.get("method", method))
                if entry_method not in METHODS:
                    _warn_corrupt_once(str(path), f"unknown method {entry_method!r} in an entry")
                    continue
                entries.append(TunedEntry(e["key"], e["config"], entry_method, str(path), rank))
    return tuple(entries)


def tuned_entries(sku: str, kernel: str) -> tuple[TunedEntry, ...]:
    """Every entry for (sku, kernel) in the current folders (read once, then from memory)."""
    folders = config_folders()
    cache_key = (folders, sku, kernel)
    table = _tables.get(cache_key)
    if table is None:
        table = _load_table(folders, sku, kernel)
        with _lock:
            _tables[cache_key] = table
    return table


def _sku_has_configs(folders: tuple[Path, ...], sku: str) -> bool:
    known = _sku_known.get((folders, sku))
    if known is None:
        known = any((root / sku).is_dir() for root in folders)
        _sku_known[(folders, sku)] = known
    return known


def clear_caches() -> None:
    """Forget every file read and every warning given (after writing config files)."""
    with _lock:
        _tables.clear()
        _sku_known.clear()
        _folders.clear()
        for cache in _shape_caches:
            cache.clear()
    _best_entry.cache_clear()
    _warn_default_once.cache_clear()
    _warn_untuned_sku_once.cache_clear()
    _warn_corrupt_once.cache_clear()


_shape_caches: list[ShapeCache] = []


class ShapeCache:
    """One host API's launch decisions per shape key (configs, grids, constexprs), so the serving
    path computes once what depends only on shapes, dtypes and the device, never on tensor
    contents.

    ``get`` answers None (and ``put`` keeps nothing) while the tuner's hooks are active
    (`override_configs`, `record_lookups`) or while planning for a named SKU (`plan_for`): those
    always see fresh lookups. ``clear_caches()`` empties every cache; a full cache starts over.
    Values are shared between calls: callers must not change them.
    """

    __slots__ = ("name", "maxsize", "_entries")

    def __init__(self, name: str, maxsize: int = 4096) -> None:
        self.name = name
        self.maxsize = maxsize
        self._entries: dict[Any, Any] = {}
        _shape_caches.append(self)

    @staticmethod
    def usable() -> bool:
        """Whether decisions may be cached now (no tuner hook, no named planning SKU)."""
        return _overrides.get() is None and not _lookup_logs.get() and planning_sku() is None

    def get(self, key: Any) -> Any:
        """The decision cached for ``key``, or None."""
        if not self.usable():
            return None
        return self._entries.get(key)

    def put(self, key: Any, value: Any) -> Any:
        """Keep ``value`` for ``key`` (when caching is usable); returns ``value``."""
        if self.usable():
            if len(self._entries) >= self.maxsize:
                self._entries.clear()
            self._entries[key] = value
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------------------------------
# Matching


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def key_distance(want: Mapping[str, Any], have: Mapping[str, Any]) -> float:
    """Sum of |log2| distances of the numeric fields; inf when a bool/string field differs or a
    field is missing on either side."""
    if set(want) != set(have):
        return math.inf
    total = 0.0
    for name, value in want.items():
        other = have[name]
        if _is_number(value) and _is_number(other):
            total += abs(math.log2(max(value, 1)) - math.log2(max(other, 1)))
        elif value != other or type(value) is not type(other):
            return math.inf
    return total


def _freeze(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(
        sorted((k, v if isinstance(v, str | int | float | bool) else repr(v)) for k, v in mapping.items())
    )


@functools.lru_cache(maxsize=4096)
def _best_entry(folders: tuple[Path, ...], sku: str, kernel: str, frozen_key: tuple) -> TunedEntry | None:
    key = dict(frozen_key)
    best, best_rank = None, None
    for entry in tuned_entries(sku, kernel):
        distance = key_distance(key, entry.key)
        if distance == math.inf:
            continue
        rank = (entry.folder_rank, distance, METHODS.index(entry.method))
        if best_rank is None or rank < best_rank:
            best, best_rank = entry, rank
    return best


def find_entry(sku: str, kernel: str, key: Mapping[str, Any]) -> TunedEntry | None:
    """The tuned entry `lookup_config` would use for `key`, or None."""
    return _best_entry(config_folders(), sku, kernel, _freeze(key))


# ---------------------------------------------------------------------------------------------------
# Overrides and recording (the tuner's hooks)

_overrides: contextvars.ContextVar[tuple[Mapping[str, Mapping[str, Any]], bool] | None] = (
    contextvars.ContextVar("vat_config_overrides", default=None)
)
_lookup_logs: contextvars.ContextVar[tuple[list[ConfigLookup], ...]] = contextvars.ContextVar(
    "vat_config_lookup_logs", default=()
)


@contextlib.contextmanager
def override_configs(
    overrides: Mapping[str, Mapping[str, Any]] | None = None, *, ignore_files: bool = False
) -> Iterator[None]:
    """Inside the block, `lookup_config(sku, K, key, default)` returns `{**default, **overrides[K]}`
    for the kernels named; with `ignore_files`, every other kernel gets its default (no tuned file)."""
    overrides = dict(overrides or {})
    for kernel, config in overrides.items():
        if not isinstance(config, Mapping):
            raise TypeError(f"override for {kernel!r} must be a mapping, got {type(config).__name__}")
    token = _overrides.set((overrides, ignore_files))
    try:
        yield
    finally:
        _overrides.reset(token)


@contextlib.contextmanager
def record_lookups() -> Iterator[list[ConfigLookup]]:
    """Collect every `lookup_config` call made inside the block."""
    recorded: list[ConfigLookup] = []
    token = _lookup_logs.set((*_lookup_logs.get(), recorded))
    try:
        yield recorded
    finally:
        _lookup_logs.reset(token)


# ---------------------------------------------------------------------------------------------------
# The lookup


def lookup_config(sku: str, kernel: str, key: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The tuned config nearest to `key` for (sku, kernel) merged over `default`, or a copy of
    `default` (see the module docstring). The result is a fresh dict the caller may change."""
    forced = _overrides.get()
    if forced is not None and kernel in forced[0]:
        config, source = {**default, **forced[0][kernel]}, "override"
    elif forced is not None and forced[1]:
        config, source = dict(default), "default"
    else:
        folders = config_folders()
        entry = _best_entry(folders, sku, kernel, _freeze(key))
        if entry is not None:
            config, source = {**default, **entry.config}, f"{entry.method}:{entry.path}"
        else:
            config, source = dict(default), "default"
            if _sku_has_configs(folders, sku):
                _warn_default_once(sku, kernel)
            else:
                _warn_untuned_sku_once(sku)
    logs = _lookup_logs.get()
    if logs:
        record = ConfigLookup(sku, kernel, dict(key), dict(default), config, source)
        for log in logs:
            log.append(record)
    return config


@functools.cache
def _warn_default_once(sku: str, kernel: str) -> None:
    logger.warning("no tuned config matches %s on %s; using the kernel's default config", kernel, sku)


@functools.cache
def _warn_untuned_sku_once(sku: str) -> None:
    # One line per SKU rather than one per kernel when nothing at all was tuned for it.
    logger.warning("no tuned configs for %s; kernels use their default configs (sized for its UB)", sku)
