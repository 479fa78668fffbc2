"""MoE expert computation on Ascend: token permutation, the expert MLP (grouped GEMMs), combine.

Semantics
---------
Slots are the (token t, top-k slot j) pairs, flattened as s = t * k + j (N = M * k of them).
`expert_map` (optional, int32 [E] global -> local expert id, -1 = not on this rank) turns global
ids into local ids; without it local id == global id and L = E.

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
      expert is not local.
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

Ascend design
-------------
- Permutation (vector cores, persistent grids, int32 index math). A counting sort over chunks of
  BLOCK_S slots: `_count_kernel` builds a [BLOCK_S, BLOCK_E] one-hot tile of each chunk's local
  expert ids and stores the per-chunk expert histogram (one contiguous row per chunk);
  `_scan_kernel` (one program) turns the histograms into per-chunk bases and the expert offsets
  with tile-wise cumsums; `_position_kernel` recomputes the one-hot, adds a cumsum along the
  chunk axis (stable rank inside the chunk) and the chunk's bases to get each slot's row, and
  writes the inverse map. The only gathers are the expert_map lookup and the scatter of
  `permuted_idx` (4 bytes per slot). BLOCK_S * BLOCK_E is capped at 4096 elements (8 x 512 for
  512 experts): the one-hot, its cumsum and their product are 16 KB fp32 tiles each, well inside
  the 192 KB UB even double-buffered.
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
- Counts, ranks and tile prefix sums are reduced in fp32 (exact below 2^24 slots, checked on the
  host) and cast to int32: fp32 reductions are native vector ops, and Triton's interpreter
  widens int32 sums/cumsums to int64 data that its stores then write with 8-byte strides.
- Index math is int32; each host wrapper checks that the largest activation offset fits in
  int32; expert weight bases are scalar int64 (all experts' weights may exceed 2^31 elements).
- bf16 on the interpreter goes through `bf16_shim` (computed in fp32, cast back).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from vllm_ascend_triton.codegen.lower import LoweringRequest, triton_type_name
from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.runtime.checks import FLOAT_DTYPES, INDEX_DTYPES, check_positive_int, check_tensor
from vllm_ascend_triton.runtime.configs import lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import bf16_shim, checks_enabled, persistent_grid

logger = logging.getLogger(__name__)

MAX_EXPERTS = 1024
MAX_TOPK = 64
MAX_SLOTS = 2**24  # counts are reduced in fp32
ONE_HOT_BUDGET = 4096  # elements of a [BLOCK_S, BLOCK_E] fp32 tile (16 KB; ~3 such tiles live)
ACTIVATIONS = ("silu",)
_INT32_MAX = 2**31 - 1

DEFAULT_ROWS_CONFIG = {"BLOCK_H": 1024}
DEFAULT_GEMM1_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}
DEFAULT_GEMM2_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}

_MODULE = __name__


class MoePermuteResult(NamedTuple):
    """What `moe_permute` returns (see the module docstring for the exact layout)."""

    permuted_hidden_states: torch.Tensor  # [M*k, H], hidden dtype
    tokens_per_expert: torch.Tensor  # int32 [L]
    expert_first_token_offset: torch.Tensor  # int32 [L + 1]
    inv_permuted_idx: torch.Tensor  # int32 [M, k], -1 = non-local expert
    permuted_idx: torch.Tensor  # int32 [M*k], source slot t*k+j, -1 = unused row


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _local_ids(ids_ptr, map_ptr, slots, smask, HAS_MAP: tl.constexpr):
    """Local expert id of each slot (-1 for masked slots and non-local experts)."""
    ids = tl.load(ids_ptr + slots, mask=smask, other=0)
    if HAS_MAP:
        # expert_map is tiny and read once per slot: the only gather of the sort.
        local = tl.load(map_ptr + ids, mask=smask, other=-1)
    else:
        local = ids
    return tl.where(smask, local, -1)


@triton.jit
def _count_kernel(
    ids_ptr,
    map_ptr,
    chunk_counts_ptr,
    num_slots,
    num_local,
    num_chunks,
    HAS_MAP: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """chunk_counts[c, e] = number of slots of chunk c whose local expert is e."""
    pid = tl.program_id(0)
    s_offs = tl.arange(0, BLOCK_S)
    e_offs = tl.arange(0, BLOCK_E)
    for c in range(pid, num_chunks, tl.num_programs(0)):
        slots = c * BLOCK_S + s_offs
        local = _local_ids(ids_ptr, map_ptr, slots, slots < num_slots, HAS_MAP)
        one_hot = (local[:, None] == e_offs[None, :]).to(tl.float32)
        counts = tl.sum(one_hot, axis=0).to(tl.int32)
        tl.store(chunk_counts_ptr + c * num_local + e_offs, counts, mask=e_offs < num_local)


@triton.jit
def _scan_kernel(
    chunk_counts_ptr,
    chunk_base_ptr,
    tokens_per_expert_ptr,
    offsets_ptr,
    num_local,
    num_chunks,
    BLOCK_C: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """One program: chunk_base[c, e] = rows of expert e in chunks before c; the expert counts and
    offsets[1:] (offsets[0] is zero-initialised by the host)."""
    c_offs = tl.arange(0, BLOCK_C)
    e_offs = tl.arange(0, BLOCK_E)
    emask = e_offs < num_local
    carry = tl.zeros([BLOCK_E], dtype=tl.float32)
    for c0 in range(0, num_chunks, BLOCK_C):
        rows = c0 + c_offs
        mask = (rows < num_chunks)[:, None] & emask[None, :]
        ptrs = rows[:, None] * num_local + e_offs[None, :]
        tile = tl.load(chunk_counts_ptr + ptrs, mask=mask, other=0).to(tl.float32)
        inclusive = tl.cumsum(tile, axis=0)
        tl.store(chunk_base_ptr + ptrs, (carry[None, :] + inclusive - tile).to(tl.int32), mask=mask)
        carry += tl.sum(tile, axis=0)
    tl.store(tokens_per_expert_ptr + e_offs, carry.to(tl.int32), mask=emask)
    tl.store(offsets_ptr + 1 + e_offs, tl.cumsum(carry, axis=0).to(tl.int32), mask=emask)


@triton.jit
def _position_kernel(
    ids_ptr,
    map_ptr,
    chunk_base_ptr,
    offsets_ptr,
    inv_idx_ptr,
    permuted_idx_ptr,
    num_slots,
    num_local,
    num_chunks,
    HAS_MAP: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Each slot's permuted row: expert offset + chunk base + stable rank inside the chunk."""
    pid = tl.program_id(0)
    s_offs = tl.arange(0, BLOCK_S)
    e_offs = tl.arange(0, BLOCK_E)
    emask = e_offs < num_local
    expert_start = tl.load(offsets_ptr + e_offs, mask=emask, other=0).to(tl.float32)
    for c in range(pid, num_chunks, tl.num_programs(0)):
        slots = c * BLOCK_S + s_offs
        smask = slots < num_slots
        local = _local_ids(ids_ptr, map_ptr, slots, smask, HAS_MAP)
        one_hot = (local[:, None] == e_offs[None, :]).to(tl.float32)
        base = expert_start + tl.load(chunk_base_ptr + c * num_local + e_offs, mask=emask, other=0).to(
            tl.float32
        )
        # inclusive cumsum down the chunk: 1-based rank of the slot among its expert's slots
        rank = tl.cumsum(one_hot, axis=0)
        pos = tl.sum(one_hot * (base[None, :] + rank - 1.0), axis=1).to(tl.int32)
        is_local = local >= 0
        pos = tl.where(is_local, pos, -1)
        tl.store(inv_idx_ptr + slots, pos, mask=smask)
        tl.store(permuted_idx_ptr + pos, slots, mask=smask & is_local)


@triton.jit
def _gather_rows_kernel(
    src_ptr,
    permuted_idx_ptr,
    dst_ptr,
    num_rows,
    hidden,
    topk,
    BLOCK_H: tl.constexpr,
):
    """dst[p] = src[permuted_idx[p] // topk], zeros for unused rows: one scalar index per row,
    the row itself as contiguous tiles."""
    pid = tl.program_id(0)
    h_offs = tl.arange(0, BLOCK_H)
    for p in range(pid, num_rows, tl.num_programs(0)):
        slot = tl.load(permuted_idx_ptr + p)
        valid = slot >= 0
        token = tl.maximum(slot, 0) // topk
        src_row = src_ptr + token * hidden
        dst_row = dst_ptr + p * hidden
        for h0 in range(0, hidden, BLOCK_H):
            h = h0 + h_offs
            hmask = h < hidden
            row = tl.load(src_row + h, mask=hmask & valid, other=0.0)
            tl.store(dst_row + h, row, mask=hmask)


@triton.jit
def _unpermute_kernel(
    y_ptr,
    weights_ptr,
    inv_idx_ptr,
    out_ptr,
    num_tokens,
    hidden,
    topk,
    BLOCK_H: tl.constexpr,
):
    """out[t] = sum_j w[t, j] * y[inv[t, j]] (inv == -1 skipped), fp32 accumulation."""
    pid = tl.program_id(0)
    h_offs = tl.arange(0, BLOCK_H)
    for t in range(pid, num_tokens, tl.num_programs(0)):
        out_row = out_ptr + t * hidden
        for h0 in range(0, hidden, BLOCK_H):
            h = h0 + h_offs
            hmask = h < hidden
            acc = tl.zeros([BLOCK_H], dtype=tl.float32)
            for j in range(0, topk):
                pos = tl.load(inv_idx_ptr + t * topk + j)
                w = tl.load(weights_ptr + t * topk + j).to(tl.float32)
                row = tl.load(y_ptr + tl.maximum(pos, 0) * hidden + h, mask=hmask & (pos >= 0), other=0.0)
                acc += tl.where(pos >= 0, w, 0.0) * row.to(tl.float32)
            tl.store(out_row + h, acc.to(out_ptr.dtype.element_ty), mask=hmask)


@triton.jit
def _grouped_gemm_kernel(
    a_ptr,
    b_ptr,
    offsets_ptr,
    c_ptr,
    n_out,
    k_dim,
    num_local,
    max_row_tiles,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Per expert e, on its permuted rows [offsets[e], offsets[e+1]):
    GATED: c = silu(a @ b[e, :n_out].T) * (a @ b[e, n_out:2n_out].T)  (b is [L, 2*n_out, k_dim])
    else:  c = a @ b[e].T                                              (b is [L, n_out, k_dim])
    a is [R, k_dim], c is [R, n_out], both in permuted row order."""
    pid = tl.program_id(0)
    e_offs = tl.arange(0, BLOCK_E)
    emask = e_offs < num_local
    start = tl.load(offsets_ptr + e_offs, mask=emask, other=0)
    end = tl.load(offsets_ptr + 1 + e_offs, mask=emask, other=0)
    tiles = ((end - start + BLOCK_M - 1) // BLOCK_M).to(tl.float32)
    tiles_end = tl.cumsum(tiles, axis=0)  # row tiles of experts 0..e
    total_tiles = tl.sum(tiles, axis=0).to(tl.int32)
    n_tiles = tl.cdiv(n_out, BLOCK_N)
    b_rows = 2 * n_out if GATED else n_out
    m_offs = tl.arange(0, BLOCK_M)
    n_offs = tl.arange(0, BLOCK_N)
    k_offs = tl.arange(0, BLOCK_K)
    for w in range(pid, max_row_tiles * n_tiles, tl.num_programs(0)):
        m_tile = w // n_tiles
        n_tile = w % n_tiles
        if m_tile < total_tiles:
            expert = tl.sum((tiles_end <= m_tile).to(tl.float32), axis=0).to(tl.int32)
            first_tile = tl.sum(tl.where(e_offs == expert, tiles_end - tiles, 0.0), axis=0).to(tl.int32)
            row_start = tl.load(offsets_ptr + expert) + (m_tile - first_tile) * BLOCK_M
            row_end = tl.load(offsets_ptr + expert + 1)
            rows = row_start + m_offs
            rmask = rows < row_end
            cols = n_tile * BLOCK_N + n_offs
            cmask = cols < n_out
            b_expert = b_ptr + expert.to(tl.int64) * b_rows * k_dim
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, k_dim, BLOCK_K):
                ks = k0 + k_offs
                kmask = ks < k_dim
                a = tl.load(
                    a_ptr + rows[:, None] * k_dim + ks[None, :],
                    mask=rmask[:, None] & kmask[None, :],
                    other=0.0,
                )
                # weight rows are contiguous along K: load [BLOCK_N, BLOCK_K] tiles (tail axis
                # contiguous for the DMA) and transpose on chip
                bmask = cmask[:, None] & kmask[None, :]
                b = tl.load(b_expert + cols[:, None] * k_dim + ks[None, :], mask=bmask, other=0.0)
                acc = tl.dot(a, tl.trans(b), acc)
                if GATED:
                    b_up = tl.load(
                        b_expert + (cols[:, None] + n_out) * k_dim + ks[None, :], mask=bmask, other=0.0
                    )
                    acc_up = tl.dot(a, tl.trans(b_up), acc_up)
            if GATED:
                acc = acc / (1.0 + tl.exp(-acc)) * acc_up
            tl.store(
                c_ptr + rows[:, None] * n_out + cols[None, :],
                acc.to(c_ptr.dtype.element_ty),
                mask=rmask[:, None] & cmask[None, :],
            )


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _block_e(num_local: int) -> int:
    return max(16, triton.next_power_of_2(max(num_local, 1)))


def _sort_blocks(num_local: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_E) with BLOCK_S * BLOCK_E <= ONE_HOT_BUDGET."""
    block_e = _block_e(num_local)
    return max(8, min(256, ONE_HOT_BUDGET // block_e)), block_e


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
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"num_experts must be <= {MAX_EXPERTS}, got {num_experts}")
    if topk_ids.shape[0] != hidden_states.shape[0]:
        raise ValueError(
            f"topk_ids must have {hidden_states.shape[0]} rows (one per token of hidden_states), "
            f"got shape {tuple(topk_ids.shape)}"
        )
    if not 1 <= topk_ids.shape[1] <= MAX_TOPK:
        raise ValueError(f"topk_ids must have 1..{MAX_TOPK} columns, got shape {tuple(topk_ids.shape)}")
    if topk_ids.device != hidden_states.device:
        raise ValueError(f"topk_ids must be on {hidden_states.device}, got {topk_ids.device}")
    if topk_ids.numel() > MAX_SLOTS:
        raise ValueError(f"topk_ids has {topk_ids.numel()} entries; at most {MAX_SLOTS} (fp32-exact counts)")
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
    if checks_enabled():
        lo, hi = int(expert_map.min()), int(expert_map.max())
        if lo < -1 or hi >= num_local_experts:
            raise ValueError(f"expert_map values must be -1 or in [0, {num_local_experts}), got [{lo}, {hi}]")
    return num_local_experts


def _check_int32_extent(name: str, rows: int, cols: int) -> None:
    if rows * cols > _INT32_MAX:
        raise ValueError(f"{name}: {rows} x {cols} elements exceed int32 index math")


def _route(
    topk_ids: torch.Tensor, expert_map: torch.Tensor | None, num_local: int, num_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The counting sort: (tokens_per_expert, offsets, inv_permuted_idx, permuted_idx)."""
    device = topk_ids.device
    topk = topk_ids.shape[1]
    num_slots = num_tokens * topk
    tokens_per_expert = torch.zeros(num_local, dtype=torch.int32, device=device)
    offsets = torch.zeros(num_local + 1, dtype=torch.int32, device=device)
    inv_idx = torch.empty(num_tokens, topk, dtype=torch.int32, device=device)
    permuted_idx = torch.full((num_slots,), -1, dtype=torch.int32, device=device)
    if num_slots == 0:
        return tokens_per_expert, offsets, inv_idx, permuted_idx
    ids = topk_ids.to(torch.int32).contiguous()
    emap = expert_map.to(torch.int32).contiguous() if expert_map is not None else ids
    block_s, block_e = _sort_blocks(num_local)
    num_chunks = triton.cdiv(num_slots, block_s)
    chunk_counts = torch.empty(num_chunks, num_local, dtype=torch.int32, device=device)
    chunk_base = torch.empty_like(chunk_counts)
    grid = persistent_grid(num_chunks)
    has_map = expert_map is not None
    _count_kernel[grid](
        ids,
        emap,
        chunk_counts,
        num_slots,
        num_local,
        num_chunks,
        HAS_MAP=has_map,
        BLOCK_S=block_s,
        BLOCK_E=block_e,
    )
    _scan_kernel[(1,)](
        chunk_counts,
        chunk_base,
        tokens_per_expert,
        offsets,
        num_local,
        num_chunks,
        BLOCK_C=max(1, ONE_HOT_BUDGET // block_e),
        BLOCK_E=block_e,
    )
    _position_kernel[grid](
        ids,
        emap,
        chunk_base,
        offsets,
        inv_idx,
        permuted_idx,
        num_slots,
        num_local,
        num_chunks,
        HAS_MAP=has_map,
        BLOCK_S=block_s,
        BLOCK_E=block_e,
    )
    return tokens_per_expert, offsets, inv_idx, permuted_idx


def _rows_config(hidden: int, dtype: torch.dtype, kernel: str) -> dict:
    cfg = lookup_config(
        current_device().sku.name, kernel, {"hidden": hidden, "dtype": str(dtype)}, DEFAULT_ROWS_CONFIG
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
    """Gather token rows into expert-contiguous order; see the module docstring for the layout.

    num_local_experts: L under an expert_map (default: expert_map.max() + 1, read on the host)."""
    _check_routing(hidden_states, topk_ids, num_experts, expert_map)
    num_local = _num_local(num_experts, expert_map, num_local_experts)
    num_tokens, hidden = hidden_states.shape
    topk = topk_ids.shape[1]
    _check_int32_extent("permuted_hidden_states", num_tokens * topk, hidden)
    tokens_per_expert, offsets, inv_idx, permuted_idx = _route(topk_ids, expert_map, num_local, num_tokens)
    permuted = torch.empty(num_tokens * topk, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    if permuted.numel():
        with bf16_shim() as shim:
            _launch_gather_rows(
                shim.input(hidden_states.contiguous()), permuted_idx, shim.output(permuted), topk
            )
    return MoePermuteResult(permuted, tokens_per_expert, offsets, inv_idx, permuted_idx)


def _launch_gather_rows(src: torch.Tensor, permuted_idx: torch.Tensor, dst: torch.Tensor, topk: int) -> None:
    num_rows, hidden = dst.shape
    cfg = _rows_config(hidden, src.dtype, "moe_permute_rows")
    _gather_rows_kernel[persistent_grid(num_rows)](src, permuted_idx, dst, num_rows, hidden, topk, **cfg)


def moe_unpermute(
    permuted_out: torch.Tensor,
    topk_weights: torch.Tensor,
    inv_permuted_idx: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[t] = sum_j topk_weights[t, j] * permuted_out[inv_permuted_idx[t, j]], skipping -1 entries."""
    check_tensor("permuted_out", permuted_out, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("topk_weights", topk_weights, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("inv_permuted_idx", inv_permuted_idx, dtypes=(torch.int32,), ndim=2)
    if inv_permuted_idx.shape != topk_weights.shape:
        raise ValueError(
            f"inv_permuted_idx must have the shape of topk_weights {tuple(topk_weights.shape)}, "
            f"got {tuple(inv_permuted_idx.shape)}"
        )
    if not 1 <= topk_weights.shape[1] <= MAX_TOPK:
        raise ValueError(
            f"topk_weights must have 1..{MAX_TOPK} columns, got shape {tuple(topk_weights.shape)}"
        )
    for name, t in (("topk_weights", topk_weights), ("inv_permuted_idx", inv_permuted_idx)):
        if t.device != permuted_out.device:
            raise ValueError(f"{name} must be on {permuted_out.device}, got {t.device}")
    num_tokens, topk = topk_weights.shape
    hidden = permuted_out.shape[1]
    _check_int32_extent("permuted_out", permuted_out.shape[0], hidden)
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
            )
    return out


def _launch_unpermute(
    y: torch.Tensor, weights: torch.Tensor, inv_idx: torch.Tensor, out: torch.Tensor
) -> None:
    num_tokens, hidden = out.shape
    cfg = _rows_config(hidden, y.dtype, "moe_unpermute")
    _unpermute_kernel[persistent_grid(num_tokens)](
        y, weights, inv_idx, out, num_tokens, hidden, weights.shape[1], **cfg
    )


def _gemm_config(kernel: str, n_out: int, k_dim: int, dtype: torch.dtype, default: dict) -> dict:
    cfg = lookup_config(
        current_device().sku.name, kernel, {"n": n_out, "k": k_dim, "dtype": str(dtype)}, default
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
) -> None:
    num_rows, k_dim = a.shape
    n_out = c.shape[1]
    num_local = b.shape[0]
    cfg = _gemm_config(kernel, n_out, k_dim, a.dtype, default)
    max_row_tiles = triton.cdiv(num_rows, cfg["BLOCK_M"]) + min(num_local, num_rows)
    work = max_row_tiles * triton.cdiv(n_out, cfg["BLOCK_N"])
    logger.debug(
        "%s: %d rows x %d x %d, %d work items (upper bound), config %s",
        kernel,
        num_rows,
        n_out,
        k_dim,
        work,
        cfg,
    )
    _grouped_gemm_kernel[persistent_grid(work, uses_cube=True)](
        a,
        b,
        offsets,
        c,
        n_out,
        k_dim,
        num_local,
        max_row_tiles,
        GATED=gated,
        BLOCK_E=_block_e(num_local),
        **cfg,
    )


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
    """vLLM's unquantized fused MoE: sum_j w[t, j] * W2_e (SiLU(W_gate_e x_t) * W_up_e x_t), e = ids[t, j].

    w13 [L, 2I, H] (gate rows then up rows), w2 [L, H, I]; L = local experts. topk_ids are global
    ids in [0, global_num_experts) (default: expert_map's length, else L); expert_map maps them to
    local ids (-1 = not local: skipped)."""
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
    _check_int32_extent("permuted rows", num_slots, max(hidden, inter))
    _check_int32_extent("w13 per expert", two_i, hidden)

    out = torch.empty(num_tokens, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    if num_tokens == 0:
        return out
    _, offsets, inv_idx, permuted_idx = _route(topk_ids, expert_map, num_local, num_tokens)
    with bf16_shim() as shim:
        x = shim.input(hidden_states.contiguous())
        w13_c = shim.input(w13.contiguous())
        w2_c = shim.input(w2.contiguous())
        weights = shim.input(topk_weights.contiguous())
        work_dtype = x.dtype
        x_perm = torch.empty(num_slots, hidden, dtype=work_dtype, device=x.device)
        _launch_gather_rows(x, permuted_idx, x_perm, topk)
        act = torch.empty(num_slots, inter, dtype=work_dtype, device=x.device)
        _launch_grouped_gemm(x_perm, w13_c, offsets, act, True, "moe_gemm_gate_up", DEFAULT_GEMM1_CONFIG)
        y = torch.empty(num_slots, hidden, dtype=work_dtype, device=x.device)
        _launch_grouped_gemm(act, w2_c, offsets, y, False, "moe_gemm_down", DEFAULT_GEMM2_CONFIG)
        _launch_unpermute(y, weights, inv_idx, shim.output(out))
    return out


# --------------------------------------------------------------------------------------------
# Torch references
# --------------------------------------------------------------------------------------------


def _local_ids_ref(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    ids = topk_ids.long()
    return expert_map.long()[ids] if expert_map is not None else ids


def moe_permute_ref(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    num_local_experts: int | None = None,
) -> MoePermuteResult:
    """Plain-torch moe_permute (stable sort of the flat slots by local expert id)."""
    num_tokens, topk = topk_ids.shape
    num_local = num_local_experts or (int(expert_map.max()) + 1 if expert_map is not None else num_experts)
    local = _local_ids_ref(topk_ids, expert_map).flatten()
    key = torch.where(local >= 0, local, num_local)
    order = torch.sort(key, stable=True).indices
    n_valid = int((local >= 0).sum())
    counts = torch.bincount(local[local >= 0], minlength=num_local).to(torch.int32)
    offsets = torch.zeros(num_local + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(counts, 0)
    permuted_idx = torch.full((num_tokens * topk,), -1, dtype=torch.int32)
    permuted_idx[:n_valid] = order[:n_valid].to(torch.int32)
    inv = torch.full((num_tokens * topk,), -1, dtype=torch.int32)
    inv[order[:n_valid]] = torch.arange(n_valid, dtype=torch.int32)
    permuted = torch.zeros(num_tokens * topk, hidden_states.shape[1], dtype=hidden_states.dtype)
    permuted[:n_valid] = hidden_states.cpu()[order[:n_valid] // topk]
    return MoePermuteResult(permuted, counts, offsets, inv.view(num_tokens, topk), permuted_idx)


def moe_unpermute_ref(
    permuted_out: torch.Tensor, topk_weights: torch.Tensor, inv_permuted_idx: torch.Tensor
) -> torch.Tensor:
    inv = inv_permuted_idx.long()
    rows = permuted_out.float()[inv.clamp(min=0)]  # [M, k, H]
    w = torch.where(inv >= 0, topk_weights.float(), 0.0)
    return (w[..., None] * rows).sum(1).to(permuted_out.dtype)


def fused_experts_ref(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop over experts in fp32; the SiLU-and-mul output is rounded to the input dtype as vLLM does."""
    dtype = hidden_states.dtype
    x = hidden_states.float()
    inter = w13.shape[1] // 2
    local = _local_ids_ref(topk_ids, expert_map)
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        tok, slot = torch.nonzero(local == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        h = x[tok] @ w13[e].float().t()
        act = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]).to(dtype).float()
        y = (act @ w2[e].float().t()).to(dtype).float()
        out.index_add_(0, tok, topk_weights[tok, slot].float()[:, None] * y)
    return out.to(dtype)


# --------------------------------------------------------------------------------------------
# Lowering and self-check
# --------------------------------------------------------------------------------------------


def lowering_requests(sku: str) -> list[LoweringRequest]:
    """Every kernel with its default config: the sort for 8 and 512 experts (with/without an
    expert_map), row moves and GEMMs in fp16, bf16 and fp32."""
    reqs: list[LoweringRequest] = []
    for num_local, has_map in ((8, False), (128, True), (512, False)):
        block_s, block_e = _sort_blocks(num_local)
        sort_sig = {"ids_ptr": "*i32", "map_ptr": "*i32"}
        reqs.append(
            LoweringRequest(
                f"{_MODULE}:_count_kernel",
                {
                    **sort_sig,
                    "chunk_counts_ptr": "*i32",
                    "num_slots": "i32",
                    "num_local": "i32",
                    "num_chunks": "i32",
                },
                {"HAS_MAP": has_map, "BLOCK_S": block_s, "BLOCK_E": block_e},
                sku,
                f"moe_count_e{num_local}",
            )
        )
        reqs.append(
            LoweringRequest(
                f"{_MODULE}:_scan_kernel",
                {
                    "chunk_counts_ptr": "*i32",
                    "chunk_base_ptr": "*i32",
                    "tokens_per_expert_ptr": "*i32",
                    "offsets_ptr": "*i32",
                    "num_local": "i32",
                    "num_chunks": "i32",
                },
                {"BLOCK_C": ONE_HOT_BUDGET // block_e, "BLOCK_E": block_e},
                sku,
                f"moe_scan_e{num_local}",
            )
        )
        reqs.append(
            LoweringRequest(
                f"{_MODULE}:_position_kernel",
                {
                    **sort_sig,
                    "chunk_base_ptr": "*i32",
                    "offsets_ptr": "*i32",
                    "inv_idx_ptr": "*i32",
                    "permuted_idx_ptr": "*i32",
                    "num_slots": "i32",
                    "num_local": "i32",
                    "num_chunks": "i32",
                },
                {"HAS_MAP": has_map, "BLOCK_S": block_s, "BLOCK_E": block_e},
                sku,
                f"moe_position_e{num_local}",
            )
        )
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        ty = f"*{triton_type_name(dtype)}"
        name = triton_type_name(dtype)
        reqs.append(
            LoweringRequest(
                f"{_MODULE}:_gather_rows_kernel",
                {
                    "src_ptr": ty,
                    "permuted_idx_ptr": "*i32",
                    "dst_ptr": ty,
                    "num_rows": "i32",
                    "hidden": "i32",
                    "topk": "i32",
                },
                dict(DEFAULT_ROWS_CONFIG),
                sku,
                f"moe_permute_rows_{name}",
            )
        )
        reqs.append(
            LoweringRequest(
                f"{_MODULE}:_unpermute_kernel",
                {
                    "y_ptr": ty,
                    "weights_ptr": "*fp32",
                    "inv_idx_ptr": "*i32",
                    "out_ptr": ty,
                    "num_tokens": "i32",
                    "hidden": "i32",
                    "topk": "i32",
                },
                dict(DEFAULT_ROWS_CONFIG),
                sku,
                f"moe_unpermute_{name}",
            )
        )
        gemm_sig = {
            "a_ptr": ty,
            "b_ptr": ty,
            "offsets_ptr": "*i32",
            "c_ptr": ty,
            "n_out": "i32",
            "k_dim": "i32",
            "num_local": "i32",
            "max_row_tiles": "i32",
        }
        for gated, default, label in (
            (True, DEFAULT_GEMM1_CONFIG, "gate_up"),
            (False, DEFAULT_GEMM2_CONFIG, "down"),
        ):
            for block_e in (128, 512) if dtype == torch.float16 else (128,):
                reqs.append(
                    LoweringRequest(
                        f"{_MODULE}:_grouped_gemm_kernel",
                        gemm_sig,
                        {"GATED": gated, **default, "BLOCK_E": block_e},
                        sku,
                        f"moe_gemm_{label}_{name}_e{block_e}",
                    )
                )
    return reqs


def self_check() -> list[CheckResult]:
    """Small cases against the torch references (fp32 and fp16, with and without expert_map)."""
    results: list[CheckResult] = []
    gen = torch.Generator().manual_seed(0)

    def routing(m: int, e: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, ids = torch.topk(torch.randn(m, e, generator=gen).softmax(-1), k)
        return w.float(), ids.to(torch.int32)

    w, ids = routing(13, 16, 4)
    x = torch.randn(13, 40, generator=gen)
    emap = torch.tensor([-1, 0, 1, -1, 2, 3, -1, 4, 5, 6, -1, 7, -1, -1, -1, -1], dtype=torch.int32)
    for label, m in (("e16_k4", None), ("e16_k4_expert_map", emap)):
        got, ref = moe_permute(x, ids, 16, m), moe_permute_ref(x, ids, 16, m)
        ok_idx = torch.equal(got.inv_permuted_idx, ref.inv_permuted_idx) and torch.equal(
            got.expert_first_token_offset, ref.expert_first_token_offset
        )
        results.append(
            compare(
                "moe_permute", f"{label} rows", got.permuted_hidden_states, ref.permuted_hidden_states, 0.0
            )
        )
        results.append(CheckResult("moe_permute", f"{label} indices", 0.0 if ok_idx else float("inf"), 0.0))
        un = moe_unpermute(got.permuted_hidden_states, w, got.inv_permuted_idx)
        results.append(
            compare(
                "moe_unpermute",
                label,
                un,
                moe_unpermute_ref(ref.permuted_hidden_states, w, ref.inv_permuted_idx),
                1e-5,
            )
        )
    w, ids = routing(9, 8, 2)
    for dtype, atol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        x = torch.randn(9, 48, generator=gen).to(dtype)
        w13 = (torch.randn(8, 64, 48, generator=gen) / 48**0.5).to(dtype)
        w2 = (torch.randn(8, 48, 32, generator=gen) / 32**0.5).to(dtype)
        results.append(
            compare(
                "fused_experts",
                f"e8_k2_{triton_type_name(dtype)}",
                fused_experts(x, w13, w2, w, ids),
                fused_experts_ref(x, w13, w2, w, ids),
                atol,
            )
        )
    return results
