"""Search spaces of `vat tune`: what may vary in a kernel's launch config on Ascend.

Only block sizes and triton-ascend's `multibuffer` compile option matter there (sourced:
triton-ascend's autotune docs); `num_warps` / `num_stages` have no meaning on Ascend and are never
searched (`candidates` refuses a space that names them).

A space is keyed by the name the host API looks its config up under (`lookup_config(sku, K, ...)`,
which is also the launch spec's name for most kernels). Kernels listed in `SPACES` have values
chosen for them; any other kernel gets a generic space derived from its default config: every
power-of-two `BLOCK_*` / `TILE_*` field at 1/4x .. 4x its default, plus `multibuffer`. Candidates a
host API rejects (a ValueError) or that build identical launch specs are dropped by the tuner, and
the survivors are pruned by the codegen report (must lower and fit the SKU's Unified Buffer).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

FORBIDDEN_PARAMS = ("num_warps", "num_stages", "num_ctas")  # GPU notions; no effect on Ascend
MULTIBUFFER = "multibuffer"
MAX_CANDIDATES = 64  # beyond this a full product becomes one-parameter-at-a-time around the default

# Key fields that grow with the batch (token counts); the others name a config file's shape.
BATCH_KEY_FIELDS = frozenset({"num_tokens", "numel", "num_seqs", "tokens", "batch", "m", "M"})

_POW2_SMALL = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    kernel: str
    params: Mapping[str, Sequence[Any]]  # parameter -> values to try
    note: str = ""

    def __post_init__(self) -> None:
        bad = sorted(set(self.params) & set(FORBIDDEN_PARAMS))
        if bad:
            raise ValueError(f"search space of {self.kernel} names {bad}: not tunable on Ascend")
        for name, values in self.params.items():
            if not values:
                raise ValueError(f"search space of {self.kernel}: no values for {name}")


_BOOL = (True, False)

SPACES: dict[str, SearchSpace] = {
    s.kernel: s
    for s in (
        SearchSpace("rope", {"BLOCK_H": _POW2_SMALL, MULTIBUFFER: _BOOL}, "heads per tile"),
        SearchSpace("mrope", {"BLOCK_H": _POW2_SMALL, MULTIBUFFER: _BOOL}, "heads per tile"),
        SearchSpace("fused_topk", {"BLOCK_M": _POW2_SMALL, MULTIBUFFER: _BOOL}, "token rows per tile"),
        SearchSpace("grouped_topk", {"BLOCK_M": _POW2_SMALL, MULTIBUFFER: _BOOL}, "token rows per tile"),
        SearchSpace(
            "reshape_and_cache", {"BLOCK_H": (1, 2, 4, 8, 16), MULTIBUFFER: _BOOL}, "KV heads per tile"
        ),
        SearchSpace(
            "unified_attention",
            {"BLOCK_M": (16, 32, 64, 128), "TILE_N": (16, 32, 64, 128), MULTIBUFFER: _BOOL},
            "query rows and KV columns per tile",
        ),
        SearchSpace(
            "moe_gemm_gate_up",
            {
                "BLOCK_M": (16, 32, 64),
                "BLOCK_N": (64, 128, 256),
                "BLOCK_K": (64, 128, 256),
                MULTIBUFFER: _BOOL,
            },
            "cube tiles",
        ),
        SearchSpace(
            "moe_gemm_down",
            {
                "BLOCK_M": (16, 32, 64),
                "BLOCK_N": (64, 128, 256),
                "BLOCK_K": (64, 128, 256),
                MULTIBUFFER: _BOOL,
            },
            "cube tiles",
        ),
    )
}


def _is_pow2_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value & (value - 1) == 0


def generic_space(kernel: str, default: Mapping[str, Any]) -> SearchSpace:
    """1/4x .. 4x of every power-of-two BLOCK_*/TILE_* field of the default, and multibuffer."""
    params: dict[str, Sequence[Any]] = {}
    for name, value in default.items():
        if name.upper().startswith(("BLOCK", "TILE")) and _is_pow2_int(value):
            params[name] = tuple(
                v for v in (value // 4, value // 2, value, value * 2, value * 4) if 1 <= v <= 4096
            )
    params[MULTIBUFFER] = _BOOL
    return SearchSpace(kernel, params, "generic: around the default")


def space_for(kernel: str, default: Mapping[str, Any]) -> SearchSpace:
    return SPACES.get(kernel) or generic_space(kernel, default)


def candidates(kernel: str, default: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Candidate configs (each merged over `default` by the lookup), the default first.

    Parameters the default does not have are left out (the host API would ignore them), except
    `multibuffer`, which the launch spec passes on as a compile option. The full product of the values is
    used when it has at most MAX_CANDIDATES configs, otherwise one parameter at a time."""
    space = space_for(kernel, default)
    params = {k: tuple(v) for k, v in space.params.items() if k in default or k == MULTIBUFFER}
    base = {k: default.get(k, True if k == MULTIBUFFER else None) for k in params}
    out: list[dict[str, Any]] = [dict(base)]
    size = 1
    for values in params.values():
        size *= len(values)
    if size <= MAX_CANDIDATES:
        combos = (dict(zip(params, combo, strict=True)) for combo in itertools.product(*params.values()))
    else:
        combos = ({**base, name: value} for name, values in params.items() for value in values)
    for combo in combos:
        if combo not in out:
            out.append(combo)
    return out


def split_key(key: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shape key, batch key): the fields naming a config file, and those that vary with the batch."""
    shape = {k: v for k, v in key.items() if k not in BATCH_KEY_FIELDS}
    batch = {k: v for k, v in key.items() if k in BATCH_KEY_FIELDS}
    return shape, batch
