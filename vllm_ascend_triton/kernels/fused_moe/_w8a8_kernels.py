"""The @triton.jit bodies of the W8A8 MoE path (design notes: `kernels.fused_moe.w8a8`)."""

import triton
import triton.language as tl

from vllm_ascend_triton.kernels.fused_moe._kernels import expert_tile_dot, expert_tiles, store_tile
from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)


@triton.jit
def _round_half_even(v):
    """Round fp32 to the nearest integer, ties to even (vLLM's int8 quant rounding), from floor
    and exact float operations only: v - floor(v) is exact for every finite float, so no tie is
    misjudged (floor(v + 0.5) misrounds 0.49999997 to 1)."""
    r = tl.floor(v)
    frac = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def _per_token_quant_kernel(
    src_ptr,
    idx_ptr,
    q_ptr,
    scale_ptr,
    num_rows,
    hidden,
    topk,
    HAS_IDX: tl.constexpr,
    GATHER: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Symmetric dynamic per-row int8: scale = absmax / 127, q = rne(x * (1 / scale)) clamped to
    [-128, 127]; an all-zero row gets scale 0 and zeros; a row holding NaN gets a NaN scale (its
    outputs become NaN downstream) and q = 0 where x is NaN.

    HAS_IDX: rows p with idx[p] < 0 (slots no local expert keeps) are not written: no kernel reads
    them. GATHER (with HAS_IDX): row p quantizes source row idx[p] // topk, the MoE permute fused
    with the quant (one scalar index per row, the row as contiguous tiles); else source row p."""
    pid = tl.program_id(0)
    h_offs = tl.arange(0, BLOCK_H)
    for p in range(pid, num_rows, tl.num_programs(0)):
        if HAS_IDX:
            slot = tl.load(idx_ptr + p)
            valid = slot >= 0
            if GATHER:
                token = tl.maximum(slot, 0) // topk
            else:
                token = p
        else:
            valid = p >= 0
            token = p
        if valid:
            # Row bases are scalar int64 products: rows x hidden may pass 2^31 elements.
            src_row = src_ptr + tl.cast(token, tl.int64) * hidden
            q_row = q_ptr + tl.cast(p, tl.int64) * hidden
            amax = tl.zeros([BLOCK_H], dtype=tl.float32)
            nans = tl.zeros([BLOCK_H], dtype=tl.float32)
            for h0 in range(0, hidden, BLOCK_H):
                h = h0 + h_offs
                x = tl.load(src_row + h, mask=h < hidden, other=0.0).to(tl.float32)
                is_num = x == x
                amax = tl.maximum(amax, tl.where(is_num, tl.abs(x), 0.0))
                nans = tl.maximum(nans, tl.where(is_num, 0.0, 1.0))
            row_max = tl.max(amax, axis=0)
            scale = row_max / 127.0
            has_scale = scale > 0.0
            inv = tl.where(has_scale, 1.0 / tl.where(has_scale, scale, 1.0), 0.0)
            for h0 in range(0, hidden, BLOCK_H):
                h = h0 + h_offs
                hmask = h < hidden
                x = tl.load(src_row + h, mask=hmask, other=0.0).to(tl.float32)
                v = _round_half_even(x * inv)
                v = tl.minimum(tl.maximum(v, -128.0), 127.0)
                # NaN (and inf * 0) lanes store 0; the row's scale carries the NaN.
                v = tl.where(v == v, v, 0.0)
                tl.store(q_row + h, v.to(tl.int8), mask=hmask)
            scale = tl.where(tl.max(nans, axis=0) > 0.0, float("nan"), scale)
            tl.store(scale_ptr + p, scale)


@triton.jit
def _w8a8_grouped_gemm_kernel(
    a_ptr,
    a_scale_ptr,
    b_ptr,
    b_scale_ptr,
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
    """Per expert e, on its permuted rows [offsets[e], offsets[e+1]), int8 x int8 -> int32 on the
    cube, dequantized in the epilogue as (acc * a_scale[row]) * b_scale[e, col] in fp32:
    GATED: c = silu(deq(a @ b[e, :n_out].T)) * deq(a @ b[e, n_out:2n_out].T)  (b [L, 2*n_out, K])
    else:  c = deq(a @ b[e].T)                                                (b [L, n_out, K])
    a int8 [R, K] with a_scale fp32 [R]; b_scale fp32 [L, rows of b]; c [R, n_out]."""
    pid = tl.program_id(0)
    e_offs, tiles, tiles_end, total_tiles = expert_tiles(offsets_ptr, num_local, BLOCK_M, BLOCK_E)
    n_tiles = tl.cdiv(n_out, BLOCK_N)
    b_rows = 2 * n_out if GATED else n_out
    m_offs = tl.arange(0, BLOCK_M)
    for w in range(pid, max_row_tiles * n_tiles, tl.num_programs(0)):
        m_tile = w // n_tiles
        if m_tile < total_tiles:
            zeros = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
            expert, row_start, rmask, cols, cmask, acc, acc_up = expert_tile_dot(
                a_ptr, b_ptr, offsets_ptr, m_tile, w % n_tiles, e_offs, tiles, tiles_end, n_out, k_dim,
                zeros, zeros, GATED, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
            a_s = tl.load(a_scale_ptr + row_start + m_offs, mask=rmask, other=0.0)
            bs_row = b_scale_ptr + expert.to(tl.int64) * b_rows
            b_s = tl.load(bs_row + cols, mask=cmask, other=0.0)
            val = acc.to(tl.float32) * a_s[:, None] * b_s[None, :]
            if GATED:
                b_s_up = tl.load(bs_row + n_out + cols, mask=cmask, other=0.0)
                up = acc_up.to(tl.float32) * a_s[:, None] * b_s_up[None, :]
                val = val / (1.0 + tl.exp(-val)) * up
            store_tile(c_ptr, row_start, rmask, cols, cmask, n_out, val, BLOCK_M)
