"""The @triton.jit bodies of the fused_moe family (design notes: the package docstring)."""

import triton
import triton.language as tl

from vllm_ascend_triton.kernels.moe_sort.jit import bin_layout
from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)


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
        # Row bases are scalar int64 products: rows x hidden may pass 2^31 elements.
        src_row = src_ptr + token.to(tl.int64) * hidden
        dst_row = dst_ptr + tl.cast(p, tl.int64) * hidden
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
    num_rows,
    hidden,
    topk,
    BLOCK_H: tl.constexpr,
):
    """out[t] = sum_j w[t, j] * y[inv[t, j]], fp32 accumulation; entries outside [0, num_rows)
    (-1 and any out-of-range value) are skipped: their row is not read, their weight not used."""
    pid = tl.program_id(0)
    h_offs = tl.arange(0, BLOCK_H)
    for t in range(pid, num_tokens, tl.num_programs(0)):
        out_row = out_ptr + tl.cast(t, tl.int64) * hidden
        for h0 in range(0, hidden, BLOCK_H):
            h = h0 + h_offs
            hmask = h < hidden
            acc = tl.zeros([BLOCK_H], dtype=tl.float32)
            for j in range(0, topk):
                pos = tl.load(inv_idx_ptr + t * topk + j)
                used = (pos >= 0) & (pos < num_rows)
                w = tl.load(weights_ptr + t * topk + j).to(tl.float32)
                y_row = y_ptr + tl.where(used, pos, 0).to(tl.int64) * hidden
                row = tl.load(y_row + h, mask=hmask & used, other=0.0)
                # A skipped entry adds exactly 0, even with a NaN/inf weight.
                acc += tl.where(used, w * row.to(tl.float32), 0.0)
            tl.store(out_row + h, acc.to(out_ptr.dtype.element_ty), mask=hmask)


@triton.jit
def expert_tiles(offsets_ptr, num_local, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """The row tiles of every local expert (from `expert_first_token_offset`), computed once per
    program: (expert lanes, tiles per expert, their inclusive cumsum, the total). Counts are fp32
    (exact below 2^24, native vector reductions)."""
    e_offs = tl.arange(0, BLOCK_E)
    emask = e_offs < num_local
    start = tl.load(offsets_ptr + e_offs, mask=emask, other=0)
    end = tl.load(offsets_ptr + 1 + e_offs, mask=emask, other=0)
    tiles = ((end - start + BLOCK_M - 1) // BLOCK_M).to(tl.float32)
    tiles_end = tl.cumsum(tiles, axis=0)  # row tiles of experts 0..e
    total_tiles = tl.sum(tiles, axis=0).to(tl.int32)
    return e_offs, tiles, tiles_end, total_tiles


@triton.jit
def expert_tile_dot(
    a_ptr,
    b_ptr,
    offsets_ptr,
    m_tile,
    n_tile,
    e_offs,
    tiles,
    tiles_end,
    n_out,
    k_dim,
    acc,
    acc_up,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One work item of a grouped GEMM (either precision): row tile `m_tile` of the permuted rows
    (mapped to its expert by the tile cumsum), N tile `n_tile`; accumulates a @ b[e, cols].T into
    `acc` (and the up rows `n_out + cols` into `acc_up` when GATED) over K.

    Returns (expert, row_start, rmask, cols, cmask, acc, acc_up)."""
    expert = tl.sum((tiles_end <= m_tile).to(tl.float32), axis=0).to(tl.int32)
    first_tile = tl.sum(tl.where(e_offs == expert, tiles_end - tiles, 0.0), axis=0).to(tl.int32)
    row_start = tl.load(offsets_ptr + expert) + (m_tile - first_tile) * BLOCK_M
    row_end = tl.load(offsets_ptr + expert + 1)
    m_offs = tl.arange(0, BLOCK_M)
    k_offs = tl.arange(0, BLOCK_K)
    rmask = row_start + m_offs < row_end
    # Scalar int64 tile bases (rows x width may pass 2^31); int32 offsets inside the tile.
    a_tile = a_ptr + row_start.to(tl.int64) * k_dim
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < n_out
    b_rows = 2 * n_out if GATED else n_out
    b_expert = b_ptr + expert.to(tl.int64) * b_rows * k_dim
    for k0 in range(0, k_dim, BLOCK_K):
        ks = k0 + k_offs
        kmask = ks < k_dim
        a = tl.load(
            a_tile + m_offs[:, None] * k_dim + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0
        )
        # Weight rows are contiguous along K: load [BLOCK_N, BLOCK_K] tiles (tail axis contiguous
        # for the DMA) and transpose on chip.
        bmask = cmask[:, None] & kmask[None, :]
        b = tl.load(b_expert + cols[:, None] * k_dim + ks[None, :], mask=bmask, other=0)
        acc = tl.dot(a, tl.trans(b), acc)
        if GATED:
            b_up = tl.load(b_expert + (cols[:, None] + n_out) * k_dim + ks[None, :], mask=bmask, other=0)
            acc_up = tl.dot(a, tl.trans(b_up), acc_up)
    return expert, row_start, rmask, cols, cmask, acc, acc_up


@triton.jit
def store_tile(c_ptr, row_start, rmask, cols, cmask, n_out, val, BLOCK_M: tl.constexpr):
    """c[row_start + i, cols] = val (rows and columns masked), in c's dtype."""
    m_offs = tl.arange(0, BLOCK_M)
    c_tile = c_ptr + row_start.to(tl.int64) * n_out
    tl.store(
        c_tile + m_offs[:, None] * n_out + cols[None, :],
        val.to(c_ptr.dtype.element_ty),
        mask=rmask[:, None] & cmask[None, :],
    )


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
    e_offs, tiles, tiles_end, total_tiles = expert_tiles(offsets_ptr, num_local, BLOCK_M, BLOCK_E)
    n_tiles = tl.cdiv(n_out, BLOCK_N)
    for w in range(pid, max_row_tiles * n_tiles, tl.num_programs(0)):
        m_tile = w // n_tiles
        if m_tile < total_tiles:
            zeros = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            _, row_start, rmask, cols, cmask, acc, acc_up = expert_tile_dot(
                a_ptr, b_ptr, offsets_ptr, m_tile, w % n_tiles, e_offs, tiles, tiles_end, n_out, k_dim,
                zeros, zeros, GATED, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
            if GATED:
                acc = acc / (1.0 + tl.exp(-acc)) * acc_up
            store_tile(c_ptr, row_start, rmask, cols, cmask, n_out, acc, BLOCK_M)


@triton.jit
def _permute_layout_kernel(
    counts_ptr,
    permuted_idx_ptr,
    tokens_per_expert_ptr,
    offsets_ptr,
    num_runs,
    num_local,
    numel,
    WRITE_COUNTS: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """moe_permute's outputs besides the scatter: rows per local expert (WRITE_COUNTS; the expert
    MLPs need only the offsets), their exclusive prefix offsets, and the -1 fill of permuted_idx
    (before the scatter)."""
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < num_local
    if tl.program_id(0) == 0:
        ends, _padded, _before, totals = bin_layout(counts_ptr, num_runs, 0, num_local, 1, BLOCK_E)
        if WRITE_COUNTS:
            tl.store(tokens_per_expert_ptr + offs_e, totals, mask=e_ok)
        tl.store(offsets_ptr + 1 + offs_e, ends, mask=e_ok)
        tl.store(offsets_ptr + offs_e, tl.zeros([BLOCK_E], tl.int32), mask=offs_e == 0)
    fill = tl.zeros([BLOCK_S], tl.int32) - 1
    for st in range(tl.program_id(0), tl.cdiv(numel, BLOCK_S), tl.num_programs(0)):
        offs = st * BLOCK_S + tl.arange(0, BLOCK_S)
        tl.store(permuted_idx_ptr + offs, fill, mask=offs < numel)
