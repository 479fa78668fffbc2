"""The @triton.jit bodies of the fused_moe family (design notes: the package docstring)."""

import triton
import triton.language as tl

from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)


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
