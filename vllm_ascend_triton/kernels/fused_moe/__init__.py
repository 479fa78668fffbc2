"""MoE expert computation on Ascend: token permutation, the expert MLP (grouped GEMMs), combine.

Semantics
---------
Slots are the (token t, top-k slot j) pairs, flattened as s = t * k + j (N = M * k of them).
`expert_map` (optional, int32/int64 [E] global -> local expert id, -1 = not on this rank) turns
global ids into local ids; without it local id == global id and L = E.

- `moe_permute(hidden_states [M, H], topk_ids [M, k], num_experts, expert_map=None,
  num_local_experts=None)` -> `MoePermuteResult` (L = num_local_experts, default
  expert_map.max() + 1, read on the host):
    * permuted_hidden_states [M*k, H]: the token rows in expert-contiguous order (ascending local
      expert id; inside one expert ascending slot s, i.e. stable by token then by k slot). Rows
      at and after `expert_first_token_offset[L]` (slots of non-local experts) are zeros.
    * tokens_per_expert int32 [L]: rows per local expert.
    * expert_first_token_offset int32 [L + 1]: exclusive prefix sum of tokens_per_expert
      (vLLM keeps int64 here; int32 because int64 vector arithmetic is scalar on Ascend).
    * inv_permuted_idx int32 [M, k]: the permuted row of slot (t, j), or -1 when that slot's
      expert is not local (or its route is dropped, see below).
    * permuted_idx int32 [M*k]: the source slot s of each permuted row (token = s // k), -1 for
      the unused rows.
  M = 0 gives empty tensors and all-zero counts.
- `moe_unpermute(permuted_out [R, H], topk_weights [M, k], inv_permuted_idx [M, k])` ->
  `out [M, H]`, out[t] = sum_j w[t, j] * permuted_out[inv[t, j]], terms with inv == -1 skipped
  (a token with no local expert gets zeros). Accumulated in fp32, stored in permuted_out's dtype.
- `fused_experts(hidden_states, w13 [L, 2I, H], w2 [L, H, I], topk_weights, topk_ids,
  activation="silu", expert_map=None, global_num_experts=None)`: vLLM's unquantized expert
  MLP; topk_ids are global ids (global_num_experts defaults to len(expert_map), else L). w13 stacks gate
  (rows [0, I)) and up (rows [I, 2I)) as vLLM's w13_weight; act = SiLU(x W_gate^T) * (x W_up^T),
  rounded to the activation dtype (as vLLM's intermediate cache), y = act W2^T, then the
  weighted sum over the k experts (non-local experts skipped). Output dtype = hidden dtype.
  NaN/inf in the inputs propagate to the affected tokens' outputs only.

Limits (`kernels.limits`, shared with moe_routing): E and L at most `MOE_MAX_EXPERTS` = 1024,
k at most `MOE_MAX_TOPK` = 32, M * k at most `MOE_MAX_SLOTS` = 2^24; one expert's w13 below 2^31
elements. Past a limit: `ValueError`. Wrong dtypes: `TypeError`; wrong shapes/values: `ValueError`.

Out-of-range data (the contract of every MoE kernel, shared with moe_routing)
-----------------------------------------------------------------------------
With input checks on (`VAT_CHECK_INPUTS=1`; default on the interpreter, off on an NPU where they
cost a device sync) the host raises `ValueError` for ids outside `[0, E)`, `expert_map` entries
outside `[-1, L)` (including values that do not fit int32: never a silent wrap) and
`inv_permuted_idx` entries outside `[-1, R)`. With checks off nothing is read or written outside
the tensors, and:
- a slot whose id is outside `[0, E)` (the documented -1 included), or whose `expert_map` entry is
  outside `[0, L)` (-1 = not local; int64 ids and entries are compared before any narrowing), is
  dropped: `inv_permuted_idx` -1, no permuted row, no count, no contribution to `fused_experts`
  (its weight is never read into a sum, even when NaN);
- a `moe_unpermute` index outside `[0, R)` is skipped like -1 (row not read, weight unused);
- NaN/inf: `moe_permute` copies rows bit for bit; `moe_unpermute` and `fused_experts` propagate
  them only to the tokens that use the affected row, weight or expert (a NaN weight of a kept
  slot makes its token NaN; an expert no kept slot routes to never touches any output).

Ascend design
-------------
- Permutation: the MoE counting sort shared with `moe_align_block_size` (`kernels.moe_sort`):
  `moe_sort_count` (one histogram row per program over its run of route tiles: int32 `[programs <=
  vector cores, L]` scratch, O(cores x experts)), `moe_permute_layout` (tokens_per_expert, the
  offsets, the -1 fill of permuted_idx), and `moe_sort_scatter` (every program redoes the scan
  over <= 48 count rows (one per vector core) in parallel, then each slot's row = expert offset +
  earlier runs + earlier tiles + rank in the tile; writes inv_permuted_idx contiguously and
  permuted_idx by the scatter, the sort's only discrete access). The expert_map is applied without
  a gather: the program loads the map once as a vector and a slot's local id is a one-hot
  reduction over the id lanes, so an id past the map cannot be read from outside it. At 8K tokens
  x top-8 x 512 experts the scratch is 81,920 bytes on a 40-core 910B3 (the old per-chunk design
  needed two 16 MiB buffers).
- Row moves (`_gather_rows_kernel`, `_unpermute_kernel`): one scalar index per row, then the row
  as contiguous BLOCK_H tiles: no discrete (scalarized) accesses.
- Expert GEMMs (`_grouped_gemm_kernel`, cube cores, `tl.dot` with fp32 accumulation): work items
  are (row tile of one expert's permuted rows, N tile); the number of row tiles is bounded on
  the host without reading the counts (ceil(N / BLOCK_M) + min(L, N)), and each program maps a
  row-tile index to its expert by comparing with the cumsum of per-expert tile counts that it
  computes once from `expert_first_token_offset`. Unused work items exit at once. The first GEMM
  computes the gate and up tiles together and applies SiLU-and-mul before storing, the second
  writes expert outputs in permuted order; `_unpermute_kernel` does the weighted combine
  (deterministic, no atomics). Tiles: BLOCK_M 64, BLOCK_N 64 (gate-up: two accumulators) / 128
  (down), BLOCK_K 64, all 16-multiples; expert weight tiles are loaded as [BLOCK_N, BLOCK_K]
  (rows contiguous along K, so the DMA tail axis is contiguous) and transposed on chip. The
  adapter IR of the defaults shows ~26-29 KB of UB buffers (A/B staging, expert offsets) and
  mix_mode "mix" (cube + vector); the fp32 accumulators (2 x 16 KB / 32 KB) stay well inside the
  192 KB UB for the SiLU-and-mul and store epilogue.
- Counts and expert tile prefix sums are reduced in fp32 (exact below 2^24 slots, checked on the
  host) and cast to int32: fp32 reductions are native vector ops.
- Index math: every row base (token rows, permuted rows, GEMM row tiles, expert weight bases) is
  a scalar int64 product, so M * k * H past 2^31 elements cannot overflow; offsets inside a tile
  or one expert's weights stay int32 vectors (int64 vector arithmetic is scalar on Ascend).
- bf16 on the interpreter goes through `bf16_shim` (computed in fp32, cast back).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import triton

from vllm_ascend_triton.kernels.fused_moe._kernels import (
    _gather_rows_kernel,
    _grouped_gemm_kernel,
    _permute_layout_kernel,
    _unpermute_kernel,
)
from vllm_ascend_triton.kernels.fused_moe.reference import (
    MoePermuteResult,
    fused_experts_ref,
    moe_permute_ref,
    moe_unpermute_ref,
)
from vllm_ascend_triton.kernels.limits import MOE_MAX_EXPERTS, MOE_MAX_SLOTS, MOE_MAX_TOPK
from vllm_ascend_triton.kernels.moe_sort import (
    SortLaunches,
    bin_lanes,
    check_expert_map_values,
    plan_sort,
    sort_launches,
)
from vllm_ascend_triton.runtime.checks import FLOAT_DTYPES, INDEX_DTYPES, check_positive_int, check_tensor
from vllm_ascend_triton.runtime.configs import ShapeCache, dtype_key, lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import (
    LaunchSpec,
    bf16_shim,
    checks_enabled,
    kernel_facts,
    persistent_grid,
)
from vllm_ascend_triton.runtime.ub import tile_elements, ub_budget_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "MoePermuteResult",
    "moe_permute",
    "moe_unpermute",
    "fused_experts",
    "moe_permute_ref",
    "moe_unpermute_ref",
    "fused_experts_ref",
]

ACTIVATIONS = ("silu",)
_INT32_MAX = 2**31 - 1
# int32 lanes per store of the permuted_idx fill.
_LAYOUT_FILL = 1024
# Row moves: a row is moved in DMA-sized tiles of at most this many elements.
_MAX_ROW_TILE = 1024

DEFAULT_GEMM1_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}
DEFAULT_GEMM2_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}


def _block_e(num_local: int) -> int:
    return max(16, triton.next_power_of_2(max(num_local, 1)))


# ---------------------------------------------------------------------------------------------------
# Validation (shared by fused_experts, fused_experts_w8a8 and moe_permute)


def _check_routing(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert_map: torch.Tensor | None,
    topk_weights: torch.Tensor | None = None,
) -> None:
    """Types, shapes, devices and limits of the routing inputs (nothing data-dependent)."""
    check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("topk_ids", topk_ids, dtypes=INDEX_DTYPES, ndim=2)
    check_positive_int("num_experts", num_experts)
    if num_experts > MOE_MAX_EXPERTS:
        raise ValueError(f"num_experts must be <= {MOE_MAX_EXPERTS}, got {num_experts}")
    if topk_ids.shape[0] != hidden_states.shape[0]:
        raise ValueError(
            f"topk_ids must have {hidden_states.shape[0]} rows (one per token of hidden_states), "
            f"got shape {tuple(topk_ids.shape)}"
        )
    if not 1 <= topk_ids.shape[1] <= MOE_MAX_TOPK:
        raise ValueError(f"topk_ids must have 1..{MOE_MAX_TOPK} columns, got shape {tuple(topk_ids.shape)}")
    if topk_ids.device != hidden_states.device:
        raise ValueError(f"topk_ids must be on {hidden_states.device}, got {topk_ids.device}")
    if topk_ids.numel() > MOE_MAX_SLOTS:
        raise ValueError(
            f"topk_ids has {topk_ids.numel()} entries; at most {MOE_MAX_SLOTS} (fp32-exact counts)"
        )
    if topk_weights is not None:
        check_tensor("topk_weights", topk_weights, dtypes=FLOAT_DTYPES, ndim=2)
        if topk_weights.shape != topk_ids.shape:
            raise ValueError(
                f"topk_weights must have the shape of topk_ids {tuple(topk_ids.shape)}, "
                f"got {tuple(topk_weights.shape)}"
            )
        if topk_weights.device != hidden_states.device:
            raise ValueError(f"topk_weights must be on {hidden_states.device}, got {topk_weights.device}")
    if expert_map is not None:
        check_tensor("expert_map", expert_map, dtypes=INDEX_DTYPES, ndim=1)
        if expert_map.shape[0] != num_experts:
            raise ValueError(
                f"expert_map must have num_experts={num_experts} entries, got {expert_map.shape[0]}"
            )
        if expert_map.device != hidden_states.device:
            raise ValueError(f"expert_map must be on {hidden_states.device}, got {expert_map.device}")


def _check_ids(topk_ids: torch.Tensor, num_experts: int) -> None:
    """With input checks on (a device sync on an NPU): every id in `[0, num_experts)`."""
    if topk_ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(topk_ids))  # one reduction, one host read each
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"topk_ids values must be in [0, {num_experts}), got [{lo}, {hi}]")


def _num_local(num_experts: int, expert_map: torch.Tensor | None, num_local_experts: int | None) -> int:
    if num_local_experts is not None:
        check_positive_int("num_local_experts", num_local_experts)
        if num_local_experts > num_experts:
            raise ValueError(
                f"num_local_experts must be <= num_experts={num_experts}, got {num_local_experts}"
            )
    if expert_map is None:
        if num_local_experts not in (None, num_experts):
            raise ValueError("num_local_experts must equal num_experts without an expert_map")
        return num_experts
    if num_local_experts is None:
        # One host read of a small static tensor; pass num_local_experts to avoid it on an NPU.
        num_local_experts = int(expert_map.max()) + 1
        if num_local_experts < 1:
            raise ValueError("expert_map maps no expert to this rank (all entries are -1)")
        if num_local_experts > num_experts:
            raise ValueError(
                f"expert_map values must be -1 or local ids below num_experts={num_experts}, "
                f"got a maximum of {num_local_experts - 1}"
            )
    check_expert_map_values(expert_map, num_local_experts)
    return num_local_experts


def _check_int32_extent(name: str, rows: int, cols: int) -> None:
    if rows * cols > _INT32_MAX:
        raise ValueError(f"{name}: {rows} x {cols} elements exceed int32 index math")


@dataclasses.dataclass(frozen=True)
class ExpertsShape:
    """The sizes of one expert-MLP call, as `check_experts` validated them."""

    num_tokens: int  # M
    topk: int  # k
    hidden: int  # H
    inter: int  # I
    num_local: int  # L
    num_experts: int  # E (global)


def check_experts(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str,
    expert_map: torch.Tensor | None,
    global_num_experts: int | None,
    weight_dtype: torch.dtype | None,
) -> ExpertsShape:
    """Everything about an expert-MLP call that does not depend on tensor contents (the checks of
    `fused_experts` and `fused_experts_w8a8`).

    Args:
        hidden_states, w13, w2, topk_weights, topk_ids, activation, expert_map, global_num_experts:
            as `fused_experts`.
        weight_dtype: the dtype w13 and w2 must have (None: hidden_states' dtype).

    Returns:
        The call's `ExpertsShape`.

    Raises:
        TypeError: a wrong dtype.
        ValueError: a wrong shape, activation, device or limit.
    """
    check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES, ndim=2)
    want = weight_dtype or hidden_states.dtype
    check_tensor("w13", w13, dtypes=(want,) if weight_dtype else FLOAT_DTYPES, ndim=3)
    check_tensor("w2", w2, dtypes=(want,) if weight_dtype else FLOAT_DTYPES, ndim=3)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    num_local, two_i, hidden = w13.shape
    if hidden_states.shape[1] != hidden:
        raise ValueError(
            f"hidden_states must have {hidden} columns (w13 is {tuple(w13.shape)}), "
            f"got shape {tuple(hidden_states.shape)}"
        )
    if two_i % 2 or two_i == 0 or hidden == 0 or num_local == 0:
        raise ValueError(
            f"w13 must be [L, 2 * intermediate_size, hidden] with all three > 0, got shape {tuple(w13.shape)}"
        )
    inter = two_i // 2
    if w2.shape != (num_local, hidden, inter):
        raise ValueError(
            f"w2 must have shape {(num_local, hidden, inter)} to match w13 {tuple(w13.shape)}, "
            f"got {tuple(w2.shape)}"
        )
    if global_num_experts is None:
        global_num_experts = expert_map.shape[0] if isinstance(expert_map, torch.Tensor) else num_local
    _check_routing(hidden_states, topk_ids, global_num_experts, expert_map, topk_weights)
    for name, t in (("w13", w13), ("w2", w2)):
        if t.dtype != want:
            raise TypeError(
                f"{name} must have dtype {want} (hidden_states' dtype: {hidden_states.dtype}), got {t.dtype}"
            )
        if t.device != hidden_states.device:
            raise ValueError(f"{name} must be on {hidden_states.device}, got {t.device}")
    if expert_map is None and global_num_experts != num_local:
        raise ValueError(
            f"without an expert_map, global_num_experts ({global_num_experts}) must equal "
            f"w13's expert count ({num_local})"
        )
    if expert_map is not None and num_local > global_num_experts:
        raise ValueError(
            f"num_local_experts must be <= num_experts={global_num_experts}, got {num_local} (w13's experts)"
        )
    # Activation rows use int64 bases; inside one expert's weights offsets stay int32.
    _check_int32_extent("w13 per expert", two_i, hidden)
    num_tokens, topk = topk_ids.shape
    return ExpertsShape(num_tokens, topk, hidden, inter, num_local, global_num_experts)


def experts_key(
    tag: str,
    hidden_states: Any,
    w13: Any,
    w2: Any,
    topk_weights: Any,
    topk_ids: Any,
    activation: Any,
    expert_map: Any,
    global_num_experts: Any,
    w13_scale: Any = None,
    w2_scale: Any = None,
) -> tuple | None:
    """The plan-cache key of an expert-MLP call: every property its validation and launch plan read
    (shapes, dtypes, devices, the plain arguments); None when a tensor argument is not a tensor or a
    plain argument is not an exact str / int (such a call takes the validating path every time). A
    call whose key equals one that was validated and planned is valid and plans the same launches.

    Args:
        tag: the op. hidden_states ... global_num_experts: as `fused_experts`. w13_scale, w2_scale:
            the W8A8 weight scales (None for the unquantized op).

    Returns:
        A hashable key, or None.
    """
    if type(activation) is not str or (
        global_num_experts is not None and type(global_num_experts) is not int
    ):
        return None  # not a plain str / int (a subclass, a bool): validated in full on every call
    try:
        key = (
            tag,
            hidden_states.shape, hidden_states.dtype, hidden_states.device,
            w13.shape, w13.dtype, w13.device,
            w2.shape, w2.dtype, w2.device,
            topk_weights.shape, topk_weights.dtype, topk_weights.device,
            topk_ids.shape, topk_ids.dtype, topk_ids.device,
            activation, global_num_experts,
            None if expert_map is None else (expert_map.shape, expert_map.dtype, expert_map.device),
            None if w13_scale is None else (w13_scale.shape, w13_scale.dtype, w13_scale.device),
            None if w2_scale is None else (w2_scale.shape, w2_scale.dtype, w2_scale.device),
        )  # fmt: skip
    except AttributeError:
        return None
    return key


# ---------------------------------------------------------------------------------------------------
# Launch plans: decided once per shape key (configs, grids, constexprs, scalar arguments) and kept as
# validated LaunchSpec templates without tensors; a call hands its tensors to `with_args`.

_PLANS = ShapeCache("fused_moe")


@dataclasses.dataclass(frozen=True)
class RoutePlan:
    """The three launches of the permutation (sort count, layout, sort scatter) for one size."""

    num_tokens: int
    topk: int
    num_local: int
    write_counts: bool  # tokens_per_expert is an output (moe_permute), not only scratch
    sort: SortLaunches
    layout: LaunchSpec  # template

    def run(
        self, ids: torch.Tensor, expert_map: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Launch the sort of `ids` (contiguous int32/int64 `[M, k]`, validated by the caller).

        Args:
            ids: the contiguous `topk_ids`.
            expert_map: the contiguous map, or None.

        Returns:
            (tokens_per_expert or None without `write_counts`, expert_first_token_offset,
            inv_permuted_idx, permuted_idx).
        """
        num_local = self.num_local
        # The layout kernel writes every entry of these (the counts, the offsets from 0, and the -1
        # fill of permuted_idx before the scatter): no host-side fill launches. `new_empty` of a
        # 1-D size: the cheapest allocation call on the host (the kernels address raw pointers).
        counts = ids.new_empty(self.sort.plan.runs * num_local, dtype=torch.int32)
        offsets = counts.new_empty(num_local + 1)
        num_slots = self.num_tokens * self.topk
        permuted_idx = counts.new_empty(num_slots)
        # moe_permute returns it as [M, k]; the expert MLPs only hand it to their combine.
        inv_idx = counts.new_empty((self.num_tokens, self.topk) if self.write_counts else num_slots)
        tokens_per_expert = counts.new_empty(num_local) if self.write_counts else None
        self.sort.count_into(ids, expert_map, counts)
        layout = self.layout
        layout.with_args(
            {
                **layout.args,
                "counts_ptr": counts,
                "permuted_idx_ptr": permuted_idx,
                # Never written without WRITE_COUNTS.
                "tokens_per_expert_ptr": tokens_per_expert if tokens_per_expert is not None else offsets,
                "offsets_ptr": offsets,
            }
        ).launch()
        # After the -1 fill (same stream): kept slots overwrite it; inv gets every slot's row or -1.
        self.sort.scatter(ids, expert_map, counts, permuted_idx, inv_idx)
        return tokens_per_expert, offsets, inv_idx, permuted_idx


def route_plan(
    num_tokens: int, topk: int, num_experts: int, num_local: int, has_map: bool, write_counts: bool = True
) -> RoutePlan:
    """The permutation's launches for `num_tokens` x `topk` routes (>= 1), cached per size.

    Args:
        num_tokens, topk: the routes. num_experts: E (ids outside `[0, E)` are dropped).
        num_local: L (the bins). has_map: ids go through an expert map.
        write_counts: tokens_per_expert is wanted (the expert MLPs read only the offsets).

    Returns:
        A `RoutePlan` (no tensors held).
    """
    plan_key = ("route", num_tokens, topk, num_experts, num_local, has_map, write_counts)
    cached = _PLANS.get(plan_key)
    if cached is not None:
        return cached
    num_slots = num_tokens * topk
    dev = current_device()
    sort = plan_sort(num_slots, num_experts, num_local, has_map=has_map, device=dev)
    logger.debug(
        "moe sort: %d slots, E=%d, L=%d, %d runs, scratch %d bytes", num_slots, num_experts, num_local,
        sort.runs, sort.scratch_bytes,
    )  # fmt: skip
    layout = LaunchSpec(
        name="moe_permute_layout",
        kernel=_permute_layout_kernel,
        grid=persistent_grid(triton.cdiv(num_slots, _LAYOUT_FILL), device=dev),
        args=dict(
            counts_ptr=None, permuted_idx_ptr=None, tokens_per_expert_ptr=None, offsets_ptr=None,
            num_runs=sort.runs, num_local=num_local, numel=num_slots,
        ),
        constexprs=dict(WRITE_COUNTS=write_counts, BLOCK_E=bin_lanes(num_local), BLOCK_S=_LAYOUT_FILL),
        config={"BLOCK_S": _LAYOUT_FILL},
    )  # fmt: skip
    plan = RoutePlan(
        num_tokens, topk, num_local, write_counts, sort_launches(sort, 1, write_inv=True), layout
    )
    return _PLANS.put(plan_key, plan)


def _route(
    topk_ids: torch.Tensor, expert_map: torch.Tensor | None, num_experts: int, num_local: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared MoE counting sort with local experts as bins:
    (tokens_per_expert, offsets, inv_permuted_idx, permuted_idx)."""
    num_tokens, topk = topk_ids.shape
    if num_tokens == 0:
        device = topk_ids.device
        return (
            torch.zeros(num_local, dtype=torch.int32, device=device),
            torch.zeros(num_local + 1, dtype=torch.int32, device=device),
            torch.empty(num_tokens, topk, dtype=torch.int32, device=device),
            torch.empty(0, dtype=torch.int32, device=device),
        )
    plan = route_plan(num_tokens, topk, num_experts, num_local, expert_map is not None)
    # Ids and map in their own dtypes: the kernels range-check before narrowing, nothing wraps.
    return plan.run(topk_ids.contiguous(), expert_map.contiguous() if expert_map is not None else None)


def rows_spec(
    kernel: str, jit_fn: Any, hidden: int, dtype: torch.dtype, rows: int, **scalars: int
) -> LaunchSpec:
    """The template of a row-parallel launch (`moe_permute_rows`, `moe_unpermute`), cached per size.

    Args:
        kernel: the launch's name (its config key). jit_fn: the kernel. hidden: H. dtype: the
            caller's data dtype (configs are looked up by it, not by the interpreter's fp32 stand-in
            for bf16, so a dry run and a real launch choose the same config). rows: rows the grid
            covers. scalars: the kernel's other scalar arguments.

    Returns:
        A validated `LaunchSpec` whose tensor arguments are None.
    """
    plan_key = (kernel, hidden, dtype, rows, *scalars.items())
    cached = _PLANS.get(plan_key)
    if cached is not None:
        return cached
    cfg = _rows_config(hidden, dtype, kernel)
    args: dict[str, Any] = dict.fromkeys(kernel_facts(jit_fn).runtime)
    args.update(scalars, hidden=hidden)
    spec = LaunchSpec(
        name=kernel,
        kernel=jit_fn,
        grid=persistent_grid(rows),
        args=args,
        constexprs=dict(BLOCK_H=cfg["BLOCK_H"]),
        config=cfg,
    )
    return _PLANS.put(plan_key, spec)


def _default_rows_config() -> dict:
    # A row tile and the fp32 accumulator of the combine: two live tiles.
    return {"BLOCK_H": min(_MAX_ROW_TILE, tile_elements(2, 4))}


def _rows_config(hidden: int, dtype: torch.dtype, kernel: str) -> dict:
    cfg = lookup_config(
        current_device().sku.name,
        kernel,
        {"hidden": hidden, "dtype": dtype_key(dtype)},
        _default_rows_config(),
    )
    cfg["BLOCK_H"] = min(cfg["BLOCK_H"], max(16, triton.next_power_of_2(hidden)))
    return cfg


def _gather_spec(hidden: int, dtype: torch.dtype, num_rows: int, topk: int) -> LaunchSpec:
    return rows_spec(
        "moe_permute_rows", _gather_rows_kernel, hidden, dtype, num_rows, num_rows=num_rows, topk=topk
    )


def unpermute_spec(hidden: int, dtype: torch.dtype, num_tokens: int, num_rows: int, topk: int) -> LaunchSpec:
    """The template of the weighted combine (`moe_unpermute`) for one size (as `rows_spec`).

    Args:
        hidden: H. dtype: the data dtype (config key). num_tokens: M. num_rows: R, rows of the
            expert outputs. topk: k.

    Returns:
        A validated `LaunchSpec` whose tensor arguments are None.
    """
    return rows_spec(
        "moe_unpermute", _unpermute_kernel, hidden, dtype, num_tokens, num_tokens=num_tokens,
        num_rows=num_rows, topk=topk,
    )  # fmt: skip


def launch_unpermute(
    spec: LaunchSpec, y: torch.Tensor, weights: torch.Tensor, inv_idx: torch.Tensor, out: torch.Tensor
) -> None:
    """Launch the combine template `spec` (from `unpermute_spec`) on these tensors.

    Args:
        spec: the template. y: `[R, H]` expert outputs (any contiguous shape of R x H). weights:
            contiguous `[M, k]`. inv_idx: contiguous int32 `[M, k]`. out: `[M, H]`, written.
    """
    spec.with_args(
        {**spec.args, "y_ptr": y, "weights_ptr": weights, "inv_idx_ptr": inv_idx, "out_ptr": out}
    ).launch()


def moe_permute(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    num_local_experts: int | None = None,
) -> MoePermuteResult:
    """Gather token rows into expert-contiguous order (stable by token, then k slot).

    Args:
        hidden_states: `[M, H]`, fp16/bf16/fp32.
        topk_ids: int32/int64 `[M, k]` global expert ids.
        num_experts: E (global).
        expert_map: optional int32/int64 `[E]` global -> local id, -1 = not on this rank.
        num_local_experts: L under an `expert_map` (default: `expert_map.max() + 1`, read on the host:
            pass it to avoid a device sync).

    Returns:
        `MoePermuteResult(permuted_hidden_states [M*k, H], tokens_per_expert int32 [L],
        expert_first_token_offset int32 [L+1], inv_permuted_idx int32 [M, k], permuted_idx int32
        [M*k])`; rows of dropped or non-local slots are zeros, their indices -1.

    Raises:
        TypeError: a wrong dtype.
        ValueError: a wrong shape, device or limit; with input checks on, ids outside `[0, E)` or map
            entries outside `[-1, L)`. With checks off such slots are dropped.
    """
    _check_routing(hidden_states, topk_ids, num_experts, expert_map)
    if checks_enabled():
        _check_ids(topk_ids, num_experts)
    num_local = _num_local(num_experts, expert_map, num_local_experts)
    num_tokens, hidden = hidden_states.shape
    topk = topk_ids.shape[1]
    tokens_per_expert, offsets, inv_idx, permuted_idx = _route(topk_ids, expert_map, num_experts, num_local)
    permuted = torch.empty(num_tokens * topk, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    if permuted.numel():
        spec = _gather_spec(hidden, hidden_states.dtype, num_tokens * topk, topk)
        with bf16_shim() as shim:
            src, dst = shim.input(hidden_states.contiguous()), shim.output(permuted)
            spec.with_args(
                {**spec.args, "src_ptr": src, "permuted_idx_ptr": permuted_idx, "dst_ptr": dst}
            ).launch()
    return MoePermuteResult(permuted, tokens_per_expert, offsets, inv_idx, permuted_idx)


def moe_unpermute(
    permuted_out: torch.Tensor,
    topk_weights: torch.Tensor,
    inv_permuted_idx: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted combine: `out[t] = sum_j topk_weights[t, j] * permuted_out[inv_permuted_idx[t, j]]`.

    Args:
        permuted_out: `[R, H]` expert outputs in permuted order, fp16/bf16/fp32.
        topk_weights: `[M, k]` fp weights.
        inv_permuted_idx: int32 `[M, k]` (from `moe_permute`); -1 entries are skipped.
        out: optional `[M, H]` output in `permuted_out`'s dtype, written in place.

    Returns:
        `out [M, H]` (fp32 accumulation, stored in `permuted_out`'s dtype); a token with no kept slot
        gets zeros.

    Raises:
        TypeError: a wrong dtype.
        ValueError: a wrong shape or device; with input checks on, indices outside `[-1, R)`. With
            checks off such indices are skipped like -1.
    """
    check_tensor("permuted_out", permuted_out, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("topk_weights", topk_weights, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("inv_permuted_idx", inv_permuted_idx, dtypes=(torch.int32,), ndim=2)
    if inv_permuted_idx.shape != topk_weights.shape:
        raise ValueError(
            f"inv_permuted_idx must have the shape of topk_weights {tuple(topk_weights.shape)}, "
            f"got {tuple(inv_permuted_idx.shape)}"
        )
    if not 1 <= topk_weights.shape[1] <= MOE_MAX_TOPK:
        raise ValueError(
            f"topk_weights must have 1..{MOE_MAX_TOPK} columns, got shape {tuple(topk_weights.shape)}"
        )
    for name, t in (("topk_weights", topk_weights), ("inv_permuted_idx", inv_permuted_idx)):
        if t.device != permuted_out.device:
            raise ValueError(f"{name} must be on {permuted_out.device}, got {t.device}")
    num_tokens, topk = topk_weights.shape
    num_rows, hidden = permuted_out.shape
    if out is None:
        out = torch.empty(num_tokens, hidden, dtype=permuted_out.dtype, device=permuted_out.device)
    else:
        check_tensor("out", out, dtypes=FLOAT_DTYPES, ndim=2)
        if out.shape != (num_tokens, hidden) or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous {(num_tokens, hidden)} tensor, got {tuple(out.shape)}"
            )
    if checks_enabled() and inv_permuted_idx.numel():
        lo, hi = int(inv_permuted_idx.min()), int(inv_permuted_idx.max())
        if lo < -1 or hi >= num_rows:
            raise ValueError(f"inv_permuted_idx values must be -1 or in [0, {num_rows}), got [{lo}, {hi}]")
    if out.numel():
        spec = unpermute_spec(hidden, permuted_out.dtype, num_tokens, num_rows, topk)
        with bf16_shim() as shim:
            launch_unpermute(
                spec,
                shim.input(permuted_out.contiguous()),
                shim.input(topk_weights.contiguous()),
                inv_permuted_idx.contiguous(),
                shim.output(out),
            )
    return out


def _gemm_ub_bytes(cfg: dict, gated: bool, elem_bytes: int) -> int:
    """UB bytes of one GEMM program: double-buffered A/B staging tiles plus the fp32 accumulators
    of the epilogue (one, or gate and up)."""
    m, n, k = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    staging = (m * k + (2 if gated else 1) * n * k) * elem_bytes
    return 2 * staging + (2 if gated else 1) * m * n * 4


def _default_gemm_config(default: dict, gated: bool, elem_bytes: int) -> dict:
    """The default tiles, with BLOCK_N halved until one program fits the SKU's UB."""
    cfg = dict(default)
    while cfg["BLOCK_N"] > 16 and _gemm_ub_bytes(cfg, gated, elem_bytes) > ub_budget_bytes(multibuffer=False):
        cfg["BLOCK_N"] //= 2
    return cfg


def _gemm_config(kernel: str, n_out: int, k_dim: int, dtype: torch.dtype, default: dict) -> dict:
    gated = kernel == "moe_gemm_gate_up"
    base = _default_gemm_config(default, gated, dtype.itemsize)
    cfg = lookup_config(
        current_device().sku.name, kernel, {"n": n_out, "k": k_dim, "dtype": dtype_key(dtype)}, base
    )
    # tl.dot needs every tile side >= 16; don't pad tiny problems beyond the next power of two.
    cfg["BLOCK_N"] = max(16, min(cfg["BLOCK_N"], triton.next_power_of_2(n_out)))
    cfg["BLOCK_K"] = max(16, min(cfg["BLOCK_K"], triton.next_power_of_2(k_dim)))
    return cfg


def grouped_gemm_spec(
    kernel: str,
    jit_fn: Any,
    cfg: dict,
    gated: bool,
    num_rows: int,
    n_out: int,
    k_dim: int,
    num_local: int,
) -> LaunchSpec:
    """The template of one grouped-GEMM launch over the permuted rows (either precision).

    Work items are (row tile of one expert, N tile); the row tiles are bounded without reading the
    counts: each expert adds at most one partial tile.

    Args:
        kernel: the launch's name. jit_fn: `_grouped_gemm_kernel` or its W8A8 twin. cfg: the tiles.
        gated: the gate-up GEMM (SiLU-and-mul epilogue). num_rows: R (M * k). n_out, k_dim: the GEMM's
            N and K. num_local: L.

    Returns:
        A validated `LaunchSpec` whose tensor arguments are None.
    """
    max_row_tiles = triton.cdiv(num_rows, cfg["BLOCK_M"]) + min(num_local, num_rows)
    work = max_row_tiles * triton.cdiv(n_out, cfg["BLOCK_N"])
    logger.debug("%s: %d rows x %d x %d, %d work items (upper bound), config %s", kernel, num_rows, n_out,
                 k_dim, work, cfg)  # fmt: skip
    args: dict[str, Any] = dict.fromkeys(kernel_facts(jit_fn).runtime)
    args.update(n_out=n_out, k_dim=k_dim, num_local=num_local, max_row_tiles=max_row_tiles)
    return LaunchSpec(
        name=kernel,
        kernel=jit_fn,
        grid=persistent_grid(work, uses_cube=True),
        args=args,
        constexprs=dict(
            GATED=gated, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            BLOCK_E=_block_e(num_local),
        ),
        config=cfg,
        uses_cube=True,
    )  # fmt: skip


def _gemm_spec(
    kernel: str,
    gated: bool,
    default: dict,
    dtype: torch.dtype,
    rows: int,
    n_out: int,
    k_dim: int,
    num_local: int,
) -> LaunchSpec:
    cfg = _gemm_config(kernel, n_out, k_dim, dtype, default)
    return grouped_gemm_spec(kernel, _grouped_gemm_kernel, cfg, gated, rows, n_out, k_dim, num_local)


@dataclasses.dataclass(frozen=True)
class _ExpertsPlan:
    shape: ExpertsShape
    route: RoutePlan
    gather: LaunchSpec  # templates
    gemm1: LaunchSpec
    gemm2: LaunchSpec
    combine: LaunchSpec


def _plan_experts(shape: ExpertsShape, dtype: torch.dtype, has_map: bool) -> _ExpertsPlan | None:
    """The launches of one fused_experts size (None without tokens: nothing is launched)."""
    m, k, h, i, num_local = shape.num_tokens, shape.topk, shape.hidden, shape.inter, shape.num_local
    if m == 0:
        return None
    rows = m * k
    return _ExpertsPlan(
        shape,
        route_plan(m, k, shape.num_experts, num_local, has_map, write_counts=False),
        _gather_spec(h, dtype, rows, k),
        _gemm_spec("moe_gemm_gate_up", True, DEFAULT_GEMM1_CONFIG, dtype, rows, i, h, num_local),
        _gemm_spec("moe_gemm_down", False, DEFAULT_GEMM2_CONFIG, dtype, rows, h, i, num_local),
        unpermute_spec(h, dtype, m, rows, k),
    )


def check_route_values(topk_ids: torch.Tensor, expert_map: torch.Tensor | None, shape: ExpertsShape) -> None:
    """The data-dependent checks of an expert-MLP call (only with input checks on: a device sync).

    Args:
        topk_ids: the ids. expert_map: the map or None. shape: the call's `ExpertsShape`.

    Raises:
        ValueError: an id outside `[0, E)` or a map entry outside `[-1, L)`.
    """
    _check_ids(topk_ids, shape.num_experts)
    if expert_map is not None:
        check_expert_map_values(expert_map, shape.num_local)


def begin_experts(
    plan: Any, hidden_states: torch.Tensor, topk_ids: torch.Tensor, expert_map: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """What every expert-MLP call does first with its cached plan: the data-dependent checks (with
    input checks on), the output, and the permutation.

    Args:
        plan: the call's plan (an object with `shape` and `route`), or its `ExpertsShape` alone when
            it has no tokens. hidden_states, topk_ids, expert_map: the call's.

    Returns:
        (contiguous hidden_states, the output `[M, H]` (contiguous, unwritten), the `RoutePlan.run`
        results or None without tokens).

    Raises:
        ValueError: with input checks on, an id or a map entry out of range.
    """
    shape = plan if isinstance(plan, ExpertsShape) else plan.shape
    if checks_enabled():
        check_route_values(topk_ids, expert_map, shape)
    x = hidden_states.contiguous()
    out = torch.empty_like(x)  # contiguous, as x
    if plan is shape:
        return x, out, None
    emap = expert_map.contiguous() if expert_map is not None else None
    return x, out, plan.route.run(topk_ids.contiguous(), emap)


def fused_experts(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    expert_map: torch.Tensor | None = None,
    global_num_experts: int | None = None,
) -> torch.Tensor:
    """vLLM's unquantized fused MoE: `sum_j w[t, j] * W2_e (SiLU(W_gate_e x_t) * W_up_e x_t)`, e = ids[t, j].

    Args:
        hidden_states: `[M, H]`, fp16/bf16/fp32.
        w13: `[L, 2I, H]` in `hidden_states`' dtype: gate rows `[0, I)` then up rows `[I, 2I)` (vLLM's
            `w13_weight`); L = local experts.
        w2: `[L, H, I]` in `hidden_states`' dtype.
        topk_weights: `[M, k]` fp routing weights.
        topk_ids: int32/int64 `[M, k]` global expert ids in `[0, global_num_experts)`.
        activation: "silu" (the only one).
        expert_map: optional int32/int64 `[global_num_experts]` global -> local id, -1 = not local
            (skipped: expert parallelism).
        global_num_experts: default `len(expert_map)`, else L.

    Returns:
        `[M, H]` in `hidden_states`' dtype; the intermediate is rounded to that dtype, as vLLM's cache.

    Raises:
        TypeError: a wrong dtype (weights must match `hidden_states`).
        ValueError: a wrong shape, activation, device or limit; with input checks on, ids or map
            entries out of range. With checks off such slots are dropped (module docstring).
    """
    key = experts_key(
        "fused_experts", hidden_states, w13, w2, topk_weights, topk_ids, activation, expert_map,
        global_num_experts,
    )  # fmt: skip
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        shape = check_experts(
            hidden_states, w13, w2, topk_weights, topk_ids, activation, expert_map, global_num_experts, None
        )
        plan = _plan_experts(shape, hidden_states.dtype, expert_map is not None) or shape
        if key is not None:
            _PLANS.put(key, plan)
    x, out, route = begin_experts(plan, hidden_states, topk_ids, expert_map)
    if route is None:  # no tokens
        return out
    _, offsets, inv_idx, permuted_idx = route
    weights = topk_weights.contiguous()
    if x.dtype is torch.bfloat16 or weights.dtype is torch.bfloat16:
        with bf16_shim() as shim:
            _experts_mlp(
                plan, shim.input(x), shim.input(w13.contiguous()), shim.input(w2.contiguous()),
                shim.input(weights), offsets, inv_idx, permuted_idx, shim.output(out),
            )  # fmt: skip
    else:
        _experts_mlp(plan, x, w13.contiguous(), w2.contiguous(), weights, offsets, inv_idx, permuted_idx, out)
    return out


def _experts_mlp(
    plan: _ExpertsPlan,
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    offsets: torch.Tensor,
    inv_idx: torch.Tensor,
    permuted_idx: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Gather, the two grouped GEMMs and the combine, on contiguous (shimmed) tensors."""
    shape = plan.shape
    rows = shape.num_tokens * shape.topk
    # The permuted activations and the expert outputs are both [R, H]: the down GEMM writes its
    # outputs over the gathered rows, which the gate-up GEMM before it (same stream) has consumed.
    rows_h = x.new_empty(rows * shape.hidden)
    act = x.new_empty(rows * shape.inter)
    spec = plan.gather
    spec.with_args({**spec.args, "src_ptr": x, "permuted_idx_ptr": permuted_idx, "dst_ptr": rows_h}).launch()
    spec = plan.gemm1
    spec.with_args(
        {**spec.args, "a_ptr": rows_h, "b_ptr": w13, "offsets_ptr": offsets, "c_ptr": act}
    ).launch()
    spec = plan.gemm2
    spec.with_args({**spec.args, "a_ptr": act, "b_ptr": w2, "offsets_ptr": offsets, "c_ptr": rows_h}).launch()
    launch_unpermute(plan.combine, rows_h, weights, inv_idx, out)
