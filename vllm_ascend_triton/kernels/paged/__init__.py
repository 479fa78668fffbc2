"""Code shared by the paged attention families (`kernels.attention`, `kernels.mla`): one home for
the paged-KV walk and its metadata validation, imported publicly by both (the families do not
import each other; import-linter's independence contract).

Device side (`kernels.paged.jit`, `@triton.jit` helpers inlined into each family's kernels):

- `kv_tile_block`: a KV tile of `TILE_N` keys (a power of two dividing the cache block) lives in
  ONE cache block: one scalar block id per tile from the block table, then contiguous tiles at a
  scalar int64 base. A block id outside the cache masks the tile and its address is clamped to
  block 0 (nothing outside the cache is addressed, whatever the metadata).
- `segment_tiles`: the KV tiles of one split-KV segment; `merge_segments`: the merge of a row's
  segments from the fp32 workspace (an optional sink joins the denominator).
- `softmax_step`, `safe_denominator`, `log_sum_exp`, `store_normalized`: the fp32 online
  softmax, its final normalization, the log-sum-exp, and the store of a normalized
  `[tokens, heads, dims]` output tile at affine addresses.
- `slot_position`: the block and row of a cache write's slot (-1 and slots outside the cache
  write nothing).
- `query_tile_sequence`: query tiles of a ragged batch numbered without a host sync
  (`cu_q[s] // BLOCK_Q + s` is sequence s's first tile; `T // BLOCK_Q + num_seqs` bounds the
  total for any split of T tokens into sequences) and found back by a scalar binary search.

Host side (this module): the static checks of a block table and of dense metadata vectors, the
data checks of block tables against sequence lengths (they read the metadata on the host, a
device sync on an NPU: callers run them only with input checks on), the split-KV choice, the
per-device dummy tensor for pointers a launch never dereferences, and the per-shape plans:
`tensor_key` (the part of a plan key that stands for a tensor's static facts) and `Plan`.

Host cost (issue 20): both families key a plan on every static fact their static checks read
(each tensor's type, dtype, shape, strides, device; the plan-deciding scalars with their types),
so a call whose key is cached skips those checks and the planning: it checks its per-call host
values (scale, lengths bounds, window, split count), runs the data checks when input checks are
on, and launches templates built once (`LaunchSpec.with_args`) with its own tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from vllm_ascend_triton.runtime.configs import ShapeCache
from vllm_ascend_triton.runtime.launch import checks_enabled

_MIN_TILES_PER_SPLIT = 2  # a segment of fewer KV tiles costs more to merge than it saves
AUTO_MAX_SPLITS = 16  # the wrappers' own split choice stays at or below this

__all__ = [
    "AUTO_MAX_SPLITS",
    "Plan",
    "plan_call",
    "cache_write_plan",
    "check_block_table",
    "check_block_table_values",
    "check_cu_seqlens",
    "check_dense_vector",
    "check_float",
    "check_slot_values",
    "choose_splits",
    "dummy",
    "largest_pow2_divisor",
    "tensor_key",
]


class Plan:
    """What one call shape of a host API decides (facts its static checks established, device,
    configs, launch templates), built by the first call of a plan key and shared by every later
    call with that key (kept in a `runtime.configs.ShapeCache`). Its fields are set once; only
    the per-variant dicts a family keeps in it (launch templates per split count, say) are filled
    on first use. It holds no caller tensor (launch templates carry `dummy` placeholders)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def largest_pow2_divisor(n: int) -> int:
    """The largest power of two dividing `n` (n > 0): the widest KV tile inside a cache block."""
    return n & -n


def check_float(name: str, value: object) -> float:
    """A finite Python number (a scalar argument, not data: always checked).

    Args:
        name: the argument's name, for the error.
        value: the value.

    Returns:
        `value` as a float.

    Raises:
        TypeError: not an int or float (bools refused).
        ValueError: not finite.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_dense_vector(name: str, t: torch.Tensor | None) -> None:
    """A 1-D metadata tensor the kernels read as element i at offset i (None is skipped).

    Args:
        name: the argument's name, for the error.
        t: a 1-D tensor or None.

    Raises:
        ValueError: its stride is not 1.
    """
    if t is not None and t.shape[0] > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous, got stride {t.stride(0)}")


def check_block_table(block_table: torch.Tensor, num_seqs: int) -> None:
    """Static checks of a 2-D block table (its dtype and rank are checked by the caller).

    Args:
        block_table: `[>= num_seqs, max_blocks]` cache block ids per sequence.
        num_seqs: sequences of the batch.

    Raises:
        ValueError: fewer rows than sequences, or a last dim that is not dense.
    """
    if block_table.shape[0] < num_seqs:
        raise ValueError(f"block_table must have a row per sequence ({num_seqs}), got {block_table.shape[0]}")
    if block_table.shape[1] > 1 and block_table.stride(1) != 1:
        raise ValueError(
            f"block_table must be contiguous along its last dim, got strides {block_table.stride()}"
        )


def check_block_table_values(
    lens_name: str, used: list[int], block_table: torch.Tensor, block_size: int, num_blocks: int
) -> None:
    """Data checks of a block table against the sequences' key counts (host values: the caller
    has read them, a device sync on an NPU, so this runs only with input checks on).

    Args:
        lens_name: the name of the key-count argument (`seqused_k`, `seq_lens`), for the error.
        used: keys per sequence, one per sequence (at least one).
        block_table: `[>= len(used), max_blocks]` block ids.
        block_size: keys per cache block.
        num_blocks: blocks in the cache.

    Raises:
        ValueError: a sequence needs more blocks than its row holds, or a block id in use lies
            outside `[0, num_blocks)`.
    """
    need = [-(-u // block_size) for u in used]
    if max(need) > block_table.shape[1]:
        s = need.index(max(need))
        raise ValueError(
            f"block_table has {block_table.shape[1]} entries per sequence but {lens_name}[{s}]={used[s]} "
            f"needs {need[s]} blocks of {block_size}"
        )
    cols = torch.arange(block_table.shape[1], device=block_table.device)
    in_use = cols[None, :] < torch.tensor(need, device=block_table.device)[:, None]
    ids = block_table[: len(used)][in_use]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
        raise ValueError(
            f"block_table entries in use must be in [0, {num_blocks}), "
            f"got [{int(ids.min())}, {int(ids.max())}]"
        )


def check_cu_seqlens(name: str, cu: list[int], limit: int, max_name: str, max_len: int) -> list[int]:
    """Data checks of row offsets of a ragged batch (host values: input checks on).

    Args:
        name: the argument's name, for the error.
        cu: the offsets, `num_seqs + 1` of them (at least two).
        limit: rows of the tensor they index (the last offset may not pass it).
        max_name: the name of the bound argument (`max_seqlen_q`), for the error.
        max_len: the caller's bound on one sequence's length.

    Returns:
        The lengths per sequence.

    Raises:
        ValueError: offsets that do not start at 0, decrease or pass `limit`; a length past
            `max_len`.
    """
    lens = [b - a for a, b in zip(cu, cu[1:], strict=False)]
    if cu[0] != 0 or min(lens) < 0 or cu[-1] > limit:
        raise ValueError(f"{name} must start at 0, not decrease and end <= {limit} (rows), got {cu}")
    if max(lens) > max_len:
        raise ValueError(f"a length in {name} ({max(lens)}) exceeds {max_name}={max_len}")
    return lens


def check_slot_values(slot_mapping: torch.Tensor, num_slots: int) -> None:
    """Data checks of a cache write's slots (they are read on the host: input checks on).

    Args:
        slot_mapping: `[n]` slots, n >= 1; -1 skips a token.
        num_slots: blocks x block size of the cache.

    Raises:
        ValueError: a slot below -1 or at or past `num_slots`.
    """
    lo, hi = int(slot_mapping.min()), int(slot_mapping.max())
    if lo < -1 or hi >= num_slots:
        raise ValueError(f"slot_mapping values must be -1 or in [0, {num_slots}), got range [{lo}, {hi}]")


def choose_splits(work_items: int, max_len: int, tile_n: int, cube_cores: int) -> int:
    """Split-KV segments for a decode launch: work items that cannot fill the cube cores cut each
    context into segments, at least two KV tiles each and at most `AUTO_MAX_SPLITS`.

    Args:
        work_items: work items of an unsplit launch.
        max_len: the longest context (a host bound; the kernels derive each segment from the
            device-side lengths, so any split count is correct for any lengths).
        tile_n: keys per KV tile.
        cube_cores: cube cores of the device.

    Returns:
        The segment count (1 = no split).
    """
    if work_items >= cube_cores:
        return 1
    by_cores = -(-cube_cores // max(work_items, 1))
    by_length = max_len // (tile_n * _MIN_TILES_PER_SPLIT)
    return max(1, min(by_cores, by_length, AUTO_MAX_SPLITS))


# One fp32 element per device, passed for pointers a launch never dereferences (workspaces of an
# unsplit launch, an absent lse, ALiBi slopes or sinks).
_DUMMIES: dict[torch.device, torch.Tensor] = {}


def dummy(device: torch.device) -> torch.Tensor:
    """A one-element fp32 tensor on `device`, made once per device (never written, never read).

    Args:
        device: the launch's device.

    Returns:
        The tensor.
    """
    t = _DUMMIES.get(device)
    if t is None:
        t = _DUMMIES[device] = torch.zeros(1, dtype=torch.float32, device=device)
    return t


def tensor_key(t: Any) -> tuple:
    """The static facts of a tensor argument that host validation and launch planning read
    (its type, dtype, shape, strides and device), as a hashable plan-key part; None for None.
    Two tensors with equal keys pass or fail the same static checks and get the same launch plan.

    Args:
        t: a tensor or None.

    Returns:
        A tuple.

    Raises:
        AttributeError: `t` is neither a tensor nor None (the caller then runs its full
            validation, which raises the documented TypeError).
    """
    if t is None:
        return ()
    return (type(t), t.dtype, t.shape, t.stride(), t.device)


def plan_call(
    cache: ShapeCache, kind: str, build: Callable[..., Plan], tensors: tuple, scalars: tuple = ()
) -> Plan:
    """The plan of a call: the cached one for its key, else `build(*tensors, *scalars)` (which
    runs the static checks and raises on bad input), kept for the key.

    Args:
        cache: the family's plan cache.
        kind: the host API (one cache serves several).
        build: the API's planner.
        tensors: every tensor argument (None for an absent optional one), in the planner's order.
        scalars: the arguments that decide the plan besides the tensors, after them in the
            planner's order; their types are part of the key (True == 1, but a bool is refused
            where an int is wanted).

    Returns:
        The plan.
    """
    try:
        key = (kind, *map(tensor_key, tensors), tuple(map(type, scalars)), scalars)
        plan = cache.get(key)
    except (AttributeError, TypeError):  # not a tensor, or unhashable: `build` raises
        key = plan = None
    if plan is None:
        plan = build(*tensors, *scalars)
        if key is not None:
            cache.put(key, plan)
    return plan


def cache_write_plan(cache: ShapeCache, build: Callable[..., Plan], tensors: tuple) -> Plan | None:
    """The plan of a cache write (`plan_call`; the plan has `n`, the slot count, and `num_slots`)
    after the slot data checks when input checks are on.

    Args:
        cache: the family's plan cache.
        build: the API's planner.
        tensors: the API's tensor arguments, the slot mapping last.

    Returns:
        The plan, or None when there is no slot to write.

    Raises:
        ValueError: (input checks on) a slot outside `[-1, num_slots)`; and what `build` raises.
    """
    plan = plan_call(cache, "cache_write", build, tensors)
    if not plan.n:
        return None
    if checks_enabled():
        check_slot_values(tensors[-1], plan.num_slots)
    return plan
