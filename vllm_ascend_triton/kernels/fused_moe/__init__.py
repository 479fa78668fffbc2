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
    bin_lanes,
    check_expert_map_values,
    plan_sort,
    sort_count,
    sort_scatter,
)
from vllm_ascend_triton.runtime.checks import FLOAT_DTYPES, INDEX_DTYPES, check_positive_int, check_tensor
from vllm_ascend_triton.runtime.configs import ShapeCache, dtype_key, lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import LaunchSpec, bf16_shim, checks_enabled, persistent_grid
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


def _check_routing(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert_map: torch.Tensor | None,
    topk_weights: torch.Tensor | None = None,
) -> None:
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
    if checks_enabled() and topk_ids.numel():
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
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


def _route(
    topk_ids: torch.Tensor, expert_map: torch.Tensor | None, num_experts: int, num_local: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared MoE counting sort with local experts as bins:
    (tokens_per_expert, offsets, inv_permuted_idx, permuted_idx)."""
    device = topk_ids.device
    num_tokens, topk = topk_ids.shape
    num_slots = num_tokens * topk
    inv_idx = torch.empty(num_tokens, topk, dtype=torch.int32, device=device)
    if num_slots == 0:
        return (
            torch.zeros(num_local, dtype=torch.int32, device=device),
            torch.zeros(num_local + 1, dtype=torch.int32, device=device),
            inv_idx,
            torch.empty(0, dtype=torch.int32, device=device),
        )
    # The layout kernel writes every entry of these three (the counts, the offsets from 0, and the
    # -1 fill of permuted_idx before the scatter): no host-side fill launches.
    tokens_per_expert = torch.empty(num_local, dtype=torch.int32, device=device)
    offsets = torch.empty(num_local + 1, dtype=torch.int32, device=device)
    permuted_idx = torch.empty(num_slots, dtype=torch.int32, device=device)
    # Ids and map in their own dtypes: the kernels range-check before narrowing, nothing wraps.
    ids = topk_ids.contiguous().view(-1)
    emap = expert_map.contiguous() if expert_map is not None else None
    plan, layout_grid = _route_plan(num_slots, num_experts, num_local, emap is not None)
    logger.debug(
        "moe sort: %d slots, E=%d, L=%d, %d runs, scratch %d bytes", num_slots, num_experts, num_local,
        plan.runs, plan.scratch_bytes,
    )  # fmt: skip
    counts = sort_count(plan, ids, emap)
    layout_cfg = {"BLOCK_S": _LAYOUT_FILL}
    LaunchSpec(
        name="moe_permute_layout",
        kernel=_permute_layout_kernel,
        grid=layout_grid,
        args=dict(
            counts_ptr=counts, permuted_idx_ptr=permuted_idx, tokens_per_expert_ptr=tokens_per_expert,
            offsets_ptr=offsets, num_runs=plan.runs, num_local=num_local, numel=num_slots,
        ),
        constexprs=dict(BLOCK_E=bin_lanes(num_local), BLOCK_S=_LAYOUT_FILL),
        config=layout_cfg,
    ).launch()  # fmt: skip
    # After the -1 fill (same stream): kept slots overwrite it; inv gets every slot's row or -1.
    sort_scatter(plan, ids, emap, counts, permuted_idx, inv_idx, 1)
    return tokens_per_expert, offsets, inv_idx, permuted_idx


_PLANS = ShapeCache("fused_moe")


def _route_plan(num_slots: int, num_experts: int, num_local: int, has_map: bool) -> tuple[Any, tuple[int]]:
    """The sort plan and the layout grid of `_route` (cached per problem size)."""
    plan_key = ("route", num_slots, num_experts, num_local, has_map)
    cached = _PLANS.get(plan_key)
    if cached is not None:
        return cached
    dev = current_device()
    plan = plan_sort(num_slots, num_experts, num_local, has_map=has_map, device=dev)
    grid = persistent_grid(triton.cdiv(num_slots, _LAYOUT_FILL), device=dev)
    return _PLANS.put(plan_key, (plan, grid))


def _rows_plan(hidden: int, dtype: torch.dtype, kernel: str, rows: int) -> tuple[dict, tuple[int]]:
    """Config and grid of a row-parallel launch (cached per problem size)."""
    plan_key = (kernel, hidden, dtype, rows)
    cached = _PLANS.get(plan_key)
    if cached is not None:
        return cached
    return _PLANS.put(plan_key, (_rows_config(hidden, dtype, kernel), persistent_grid(rows)))


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
    num_local = _num_local(num_experts, expert_map, num_local_experts)
    num_tokens, hidden = hidden_states.shape
    topk = topk_ids.shape[1]
    tokens_per_expert, offsets, inv_idx, permuted_idx = _route(topk_ids, expert_map, num_experts, num_local)
    permuted = torch.empty(num_tokens * topk, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    if permuted.numel():
        with bf16_shim() as shim:
            _launch_gather_rows(
                shim.input(hidden_states.contiguous()), permuted_idx, shim.output(permuted), topk,
                hidden_states.dtype,
            )  # fmt: skip
    return MoePermuteResult(permuted, tokens_per_expert, offsets, inv_idx, permuted_idx)


def _launch_gather_rows(
    src: torch.Tensor, permuted_idx: torch.Tensor, dst: torch.Tensor, topk: int, dtype: torch.dtype
) -> None:
    """`dtype`: the caller's data dtype (configs are looked up by it, not by the interpreter's
    fp32 stand-in for bf16, so a dry run and a real launch choose the same config)."""
    num_rows, hidden = dst.shape
    cfg, grid = _rows_plan(hidden, dtype, "moe_permute_rows", num_rows)
    LaunchSpec(
        name="moe_permute_rows",
        kernel=_gather_rows_kernel,
        grid=grid,
        args=dict(
            src_ptr=src, permuted_idx_ptr=permuted_idx, dst_ptr=dst, num_rows=num_rows, hidden=hidden,
            topk=topk,
        ),
        constexprs=dict(BLOCK_H=cfg["BLOCK_H"]),
        config=cfg,
    ).launch()  # fmt: skip


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
    hidden = permuted_out.shape[1]
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
        if lo < -1 or hi >= permuted_out.shape[0]:
            raise ValueError(
                f"inv_permuted_idx values must be -1 or in [0, {permuted_out.shape[0]}), got [{lo}, {hi}]"
            )
    if out.numel():
        with bf16_shim() as shim:
            _launch_unpermute(
                shim.input(permuted_out.contiguous()),
                shim.input(topk_weights.contiguous()),
                inv_permuted_idx.contiguous(),
                shim.output(out),
                permuted_out.dtype,
            )
    return out


def _launch_unpermute(
    y: torch.Tensor, weights: torch.Tensor, inv_idx: torch.Tensor, out: torch.Tensor, dtype: torch.dtype
) -> None:
    num_tokens, hidden = out.shape
    cfg, grid = _rows_plan(hidden, dtype, "moe_unpermute", num_tokens)
    LaunchSpec(
        name="moe_unpermute",
        kernel=_unpermute_kernel,
        grid=grid,
        args=dict(
            y_ptr=y, weights_ptr=weights, inv_idx_ptr=inv_idx, out_ptr=out, num_tokens=num_tokens,
            num_rows=y.shape[0], hidden=hidden, topk=weights.shape[1],
        ),
        constexprs=dict(BLOCK_H=cfg["BLOCK_H"]),
        config=cfg,
    ).launch()  # fmt: skip


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


def _launch_grouped_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    offsets: torch.Tensor,
    c: torch.Tensor,
    gated: bool,
    kernel: str,
    default: dict,
    dtype: torch.dtype,
) -> None:
    num_rows, k_dim = a.shape
    n_out = c.shape[1]
    num_local = b.shape[0]
    plan_key = (kernel, n_out, k_dim, dtype, num_rows, num_local)
    cached = _PLANS.get(plan_key)
    if cached is None:
        cfg = _gemm_config(kernel, n_out, k_dim, dtype, default)
        max_row_tiles = triton.cdiv(num_rows, cfg["BLOCK_M"]) + min(num_local, num_rows)
        work = max_row_tiles * triton.cdiv(n_out, cfg["BLOCK_N"])
        cached = _PLANS.put(plan_key, (cfg, max_row_tiles, work, persistent_grid(work, uses_cube=True)))
    cfg, max_row_tiles, work, grid = cached
    logger.debug(
        "%s: %d rows x %d x %d, %d work items (upper bound), config %s",
        kernel,
        num_rows,
        n_out,
        k_dim,
        work,
        cfg,
    )
    LaunchSpec(
        name=kernel,
        kernel=_grouped_gemm_kernel,
        grid=grid,
        args=dict(
            a_ptr=a, b_ptr=b, offsets_ptr=offsets, c_ptr=c, n_out=n_out, k_dim=k_dim, num_local=num_local,
            max_row_tiles=max_row_tiles,
        ),
        constexprs=dict(
            GATED=gated, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            BLOCK_E=_block_e(num_local),
        ),
        config=cfg,
        uses_cube=True,
    ).launch()  # fmt: skip


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
    check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("w13", w13, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("w2", w2, dtypes=FLOAT_DTYPES, ndim=3)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    num_local, two_i, hidden = w13.shape
    if hidden_states.shape[1] != hidden:
        raise ValueError(
            f"hidden_states must have {hidden} columns (w13 is {tuple(w13.shape)}), "
            f"got shape {tuple(hidden_states.shape)}"
        )
    if two_i % 2 or two_i == 0:
        raise ValueError(f"w13 dim 1 must be 2 * intermediate_size (even, > 0), got shape {tuple(w13.shape)}")
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
        if t.dtype != hidden_states.dtype:
            raise TypeError(f"{name} must have hidden_states' dtype {hidden_states.dtype}, got {t.dtype}")
        if t.device != hidden_states.device:
            raise ValueError(f"{name} must be on {hidden_states.device}, got {t.device}")
    if expert_map is None and global_num_experts != num_local:
        raise ValueError(
            f"without an expert_map, global_num_experts ({global_num_experts}) must equal "
            f"w13's expert count ({num_local})"
        )
    if expert_map is not None:
        _num_local(global_num_experts, expert_map, num_local)  # values fit w13's expert count
    num_tokens, topk = topk_ids.shape
    num_slots = num_tokens * topk
    # Activation rows use int64 bases; inside one expert's weights offsets stay int32.
    _check_int32_extent("w13 per expert", two_i, hidden)

    out = torch.empty(num_tokens, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    if num_tokens == 0:
        return out
    _, offsets, inv_idx, permuted_idx = _route(topk_ids, expert_map, global_num_experts, num_local)
    with bf16_shim() as shim:
        x = shim.input(hidden_states.contiguous())
        w13_c = shim.input(w13.contiguous())
        w2_c = shim.input(w2.contiguous())
        weights = shim.input(topk_weights.contiguous())
        work_dtype = x.dtype
        x_perm = torch.empty(num_slots, hidden, dtype=work_dtype, device=x.device)
        _launch_gather_rows(x, permuted_idx, x_perm, topk, hidden_states.dtype)
        act = torch.empty(num_slots, inter, dtype=work_dtype, device=x.device)
        _launch_grouped_gemm(
            x_perm, w13_c, offsets, act, True, "moe_gemm_gate_up", DEFAULT_GEMM1_CONFIG, hidden_states.dtype
        )
        y = torch.empty(num_slots, hidden, dtype=work_dtype, device=x.device)
        _launch_grouped_gemm(
            act, w2_c, offsets, y, False, "moe_gemm_down", DEFAULT_GEMM2_CONFIG, hidden_states.dtype
        )
        _launch_unpermute(y, weights, inv_idx, shim.output(out), hidden_states.dtype)
    return out
