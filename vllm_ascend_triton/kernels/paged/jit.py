"""Device side shared by the attention and MLA kernels (design notes: `kernels.paged`): the
paged-KV tile walk, the cache write's slot lookup, the split-KV segment range, the online-softmax step and
the ragged query tile lookup. Every helper is a `@triton.jit` function that Triton inlines into its caller."""

import triton
import triton.language as tl

from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)


@triton.jit
def slot_position(slot_ptr, t, num_slots, block_size):
    """Where a cache write puts token t: (ok, block, row in block) of `slot_ptr[t]`. ok is False
    for -1 (vLLM's skip) and for any slot outside `[0, num_slots)`: never a stray write."""
    slot = tl.load(slot_ptr + t).to(tl.int64)
    blk = slot // block_size
    return (slot >= 0) & (slot < num_slots), blk, slot - blk * block_size


@triton.jit
def query_tile_sequence(cu_q_ptr, num_seqs, qt, BLOCK_Q: tl.constexpr):
    """Sequence of query tile `qt` and the tile's first token inside it, with tiles numbered
    without a host sync (`cu_q[s] // BLOCK_Q + s` is the first tile of sequence s): the last s
    whose first tile is <= qt, by a scalar binary search over `cu_q`.

    Returns (seq, q_start, q_len, tok0); tok0 is negative or >= q_len for tiles past the end of
    their sequence (the caller skips them)."""
    lo = num_seqs * 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_tile = tl.load(cu_q_ptr + mid).to(tl.int32) // BLOCK_Q + mid
        take = first_tile <= qt
        lo = tl.where(take, mid, lo)
        hi = tl.where(take, hi, mid - 1)
    q_start = tl.load(cu_q_ptr + lo).to(tl.int32)
    q_len = tl.load(cu_q_ptr + lo + 1).to(tl.int32) - q_start
    tok0 = (qt - (q_start // BLOCK_Q + lo)) * BLOCK_Q
    return lo, q_start, q_len, tok0


@triton.jit
def segment_tiles(j_lo, j_hi, seg, num_segments):
    """KV tiles `[j_lo, j_hi)` of split segment `seg` out of `num_segments` (an empty range when
    the segment gets no tile: it then contributes nothing to the merge)."""
    per_seg = (j_hi - j_lo + num_segments - 1) // num_segments
    first = j_lo + seg * per_seg
    return first, tl.minimum(j_hi, first + per_seg)


@triton.jit
def kv_tile_block(bt_row, j, num_blocks, TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Where KV tile `j` (keys `[j * TILE_N, (j + 1) * TILE_N)`, TILE_N dividing BLOCK_SIZE)
    lives: ONE scalar block id from the sequence's block-table row, then the tile is contiguous
    inside that block (a per-row lookup would make the Ascend adapter scalarize the KV loads).

    Returns (blk, blk_ok, in_blk): the int64 block id, clamped to 0 when it lies outside
    `[0, num_blocks)` so nothing outside the cache is addressed; whether it was in range (the
    caller masks the tile out of the softmax otherwise); the tile's first row in the block."""
    k0 = j * TILE_N
    blk_idx = k0 // BLOCK_SIZE
    blk = tl.load(bt_row + blk_idx).to(tl.int64)
    blk_ok = (blk >= 0) & (blk < num_blocks)
    blk = tl.where(blk_ok, blk, 0)
    return blk, blk_ok, k0 - blk_idx * BLOCK_SIZE


@triton.jit
def softmax_step(s, m_i, l_i):
    """One online-softmax step over a masked score tile `s` (-inf = invisible) in fp32.

    Returns (p, alpha, m_new, l_new): the tile's probabilities relative to the new running max,
    the factor that rescales the running accumulator, the new running max and sum. A row that
    has seen no key keeps max -inf and sum 0 (its p and alpha stay finite: 0 and 1)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def safe_denominator(l_i):
    """The softmax sum to divide by: 1 where a row saw nothing (its output is then 0). `== 0`,
    not `> 0`: a NaN sum must stay NaN."""
    return tl.where(l_i == 0.0, 1.0, l_i)


@triton.jit
def log_sum_exp(m_i, l_i):
    """Natural-log log-sum-exp of a row's scores from its running max and sum (-inf for a row
    that saw no key: no weight in a later merge)."""
    return tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(safe_denominator(l_i)))


@triton.jit
def store_normalized(
    out_ptr, row0, offs_t, heads, cols, acc, l_i, o_stride_t, o_stride_h, mask,
    T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
):  # fmt: skip
    """Store `acc / l` (2-D rows r = (token r // H, head r % H)) as the `[T, H, D]` output tile
    at tokens `row0 + offs_t`, heads `heads`, columns `cols`: addresses affine per axis (rows
    addressed through `r // H` would make the Ascend adapter scalarize the store). A row that saw
    nothing stores 0."""
    o = tl.reshape(acc / safe_denominator(l_i)[:, None], (T, H, D))
    tl.store(
        out_ptr
        + row0 * o_stride_t
        + offs_t[:, None, None] * o_stride_t
        + heads[None, :, None] * o_stride_h
        + cols[None, None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def merge_segments(
    ws_m_ptr, ws_l_ptr, ws_acc_ptr, row0, offs_s, s_mask, offs_d, acc_mask, sink,
    ACC_W: tl.constexpr, HAS_SINK: tl.constexpr,
):  # fmt: skip
    """Merge one (row, head)'s split-KV segments from the fp32 workspace: running max and sum of
    segment s at `row0 + s`, its accumulator at `(row0 + s) * ACC_W`; with HAS_SINK, the logit
    `sink` joins the softmax denominator (no value).

    Returns (o, m_safe, l_tot): the merged output row (0 for a row with no key and no sink; a NaN
    sink or sum stays NaN), the merged max (0 where it is -inf) and sum (for a log-sum-exp)."""
    m = tl.load(ws_m_ptr + row0 + offs_s, mask=s_mask, other=float("-inf"))
    l_seg = tl.load(ws_l_ptr + row0 + offs_s, mask=s_mask, other=0.0)
    m_max = tl.max(m, 0)
    if HAS_SINK:
        m_max = tl.maximum(m_max, sink)
    m_safe = tl.where(m_max > float("-inf"), m_max, 0.0)
    wgt = tl.exp(m - m_safe)
    l_tot = tl.sum(l_seg * wgt, 0)
    if HAS_SINK:
        l_tot += tl.exp(sink - m_safe)
    acc = tl.load(
        ws_acc_ptr + row0 * ACC_W + offs_s[:, None] * ACC_W + offs_d[None, :], mask=acc_mask, other=0.0
    )
    return tl.sum(acc * wgt[:, None], 0) / safe_denominator(l_tot), m_safe, l_tot
