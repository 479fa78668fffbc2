"""Paged attention for Triton-Ascend: the KV-cache write and vLLM's unified attention.

Semantics
---------
`reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)` (vLLM's
`reshape_and_cache_flash`): token `t < len(slot_mapping)` with `slot = slot_mapping[t] >= 0`
writes `key[t]` / `value[t]` (`[num_kv_heads, head_size]`) into
`cache[slot // block_size, slot % block_size]`; slot -1 skips the token. `key`/`value` may have
more rows than `slot_mapping` (vLLM pads them); the caches `[num_blocks, block_size,
num_kv_heads, head_size]` may be strided views of one packed tensor (vLLM 0.32 keeps K and V in
one `[num_blocks, 2, block_size, H, D]` tensor and unbinds dim 1). Values are cast to the
cache's dtype. With input checks on, a slot outside the cache (or < -1) raises ValueError.

`unified_attention(q, k_cache, v_cache, out, cu_seqlens_q, max_seqlen_q, seqused_k,
max_seqlen_k, softmax_scale, causal, window_size, block_table, softcap, alibi_slopes=None,
sinks=None, *, num_kv_splits=None)` follows vLLM 0.32's
`vllm/v1/attention/ops/triton_unified_attention.py`:

- Sequence `s` owns query rows `q[cu_seqlens_q[s]:cu_seqlens_q[s+1]]` (`[T, Hq, D]`) and
  `seqused_k[s]` keys, gathered from `block_table[s]` (key `k` lives in cache block
  `block_table[s, k // block_size]`, row `k % block_size`). The query chunk sits at the END of
  its context: query row `i` has absolute position `context_len + i` with
  `context_len = seqused_k[s] - query_len`. This one rule serves prefill (context 0), chunked
  prefill and decode (query_len 1).
- Query head `h` reads KV head `h // (Hq // Hkv)` (GQA/MQA).
- score = softmax_scale * q.k; with `softcap > 0`: `softcap * tanh(score / softcap)`.
- causal: key `k` visible iff `k <= context_len + i`; non-causal: every key `< seqused_k`.
- `window_size = (left, right)`, -1 = none. As in vLLM's kernel the window is
  `W = left + 1`: visible iff `(q_pos - k) < W`, and when non-causal also `(k - q_pos) < W`
  (vLLM's kernel ignores `right`; so do we). A window larger than the sequence changes nothing.
- ALiBi (`alibi_slopes [Hq]` fp32): adds `slope[h] * (k - context_len)` after masking (vLLM's
  form; it differs from `slope * (k - q_pos)` by a per-row constant, which softmax cancels).
- Sinks (`sinks [Hq]`): one extra logit per head, `sinks[h]` (not scaled), that joins the
  softmax denominator and contributes no value.
- Softmax and both accumulations in fp32; P is cast to the KV dtype for the PV product (as
  vLLM does), so fp16 results carry fp16 rounding of P.
- Documented edge results: a sequence with zero new tokens writes nothing; rows of `out` beyond
  `cu_seqlens_q[-1]` (padding) are never written; a row that sees no key and no sink (only
  possible with inconsistent metadata) gets zeros instead of NaN.
- bf16 on the interpreter goes through the runtime's bf16 shim (fp32 arithmetic on bf16 data).
- `num_kv_splits` (ours, keyword-only): None = the wrapper decides, 1 = never split, n > 1 =
  force n context segments (tests use it).
- Not supported (vLLM 0.32 extras outside the contract): per-sequence `causal` tensors, fp8 /
  int8 KV caches and descales, qq_bias, mm_prefix ranges, chunked-local attention, R-SWA.
  A `causal` that is not a bool raises TypeError.

Ascend design
-------------
- Main kernel on the cube cores: `persistent_grid(work, uses_cube=True)`, each program loops
  over work items `w = pid, pid + grid, ...`. A work item is (query tile, KV head[, segment]).
  Query tiles are numbered without a host sync as vLLM does (`cu_seqlens_q[s] // BLOCK_Q + s`
  is the first tile of sequence `s`; the total is bounded by `T // BLOCK_Q + num_seqs`); each
  item finds its sequence by a scalar binary search over `cu_seqlens_q` and skips tiles past
  the sequence's query length.
- GQA: a query tile holds `BLOCK_Q` tokens x all `QPK = Hq / Hkv` query heads of one KV head
  (rows `r -> token r // QPK_PAD, head r % QPK_PAD`, `BLOCK_M = BLOCK_Q * QPK_PAD >= 16` rows
  for the cube), so each KV tile is read once per (sequence, KV head, query tile) and feeds all
  heads of the group. Q, the output and the split workspace are addressed through the 3-D
  `[BLOCK_Q, QPK_PAD, HEAD_PAD]` view (affine per axis) and `tl.reshape`d to/from the 2-D rows:
  addressing rows through `r // QPK_PAD` made the adapter scalarize the output store.
- The KV loop is tiled BY CACHE BLOCK: a KV tile is `TILE_N` keys with `TILE_N` a power of two
  dividing `block_size`, so a tile never straddles blocks. Per tile the kernel loads ONE scalar
  block id from the block table, then K and V as contiguous `[TILE_N, HEAD_PAD]` tiles at a
  scalar (int64) base address. Looking the block id up per row (the GPU style) makes the
  Ascend adapter scalarize the KV loads (discrete accesses); the scalar lookup gives none.
- `tl.dot` computes `Q K^T` and `P V` on the cube with fp32 accumulation (triton-ascend's dot
  docs list fp16/bf16/fp32/int8 inputs on A2/A3); the online softmax (running max / sum,
  rescaling of the accumulator) runs in fp32 on the vector units. The head dim is padded to a
  power of two (`HEAD_PAD`) with masks (80 -> 128, 96 -> 128).
- Masks inside the KV loop compare positions as fp32 (`q_pos - k_pos` once per tile): Ascend
  vectorizes float compares while integer compares in compute fall back to scalar code.
  Positions are exact in fp32 below 2**24, which the wrapper enforces on `max_seqlen_k`.
- The tile loop only visits tiles the row range can see: causal tiles stop at the tile's last
  query position, sliding windows start at the first visible key.
- Tile sizes: `BLOCK_M` (query rows) and `TILE_N` (keys per KV tile) come from
  `lookup_config(sku, "unified_attention", ...)`; the default keeps the live tiles (Q, K, V,
  S, P, acc) under half of the 192 KB Unified Buffer so double buffering fits:
  `_ub_estimate` below (it also counts the fp32 S/P/acc tiles): fp16 D=128 block 128 ->
  BLOCK_M 16, TILE_N 64; fp32 D=256 -> TILE_N 16. The adapter IR of those defaults allocates
  12-41 KB of buffers (`vat compile` / the lowering test report it). Decode-only batches keep
  the minimum 16 rows (one real token per sequence; the tile's other tokens are masked).
- Split-KV (decode, few sequences): when `num_seqs * Hkv` work items cannot fill the cube
  cores, each item's KV range is cut into `num_kv_splits` segments (work item = (tile, KV head,
  segment)); each segment writes its unnormalized accumulator, running max and sum to an fp32
  workspace, and a vector-core reduction kernel combines segments (and the sink) per
  (token, head). The host wrapper picks the split count from the cube core count.
- Index math: int32 inside a tile; base addresses of cache blocks, tokens and workspace rows
  are scalar int64 products so large caches cannot overflow.
- `reshape_and_cache` is vector-only (`persistent_grid(tokens)` on the vector cores): per token
  one scalar slot load, then `[BLOCK_H, HEAD_PAD]` contiguous tiles of K and V copied to the
  block row (no per-element gather).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from vllm_ascend_triton.codegen.lower import LoweringRequest, kernel_ref, triton_type_name
from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.runtime.checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from vllm_ascend_triton.runtime.configs import lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import bf16_shim, checks_enabled, persistent_grid

logger = logging.getLogger(__name__)

__all__ = [
    "reshape_and_cache",
    "unified_attention",
    "reshape_and_cache_reference",
    "unified_attention_reference",
    "lowering_requests",
    "self_check",
]

_MAX_HEAD_SIZE = 256
_MIN_BLOCK_M = 16  # cube fractal: fewer rows waste the same cube pass anyway
_MAX_SPLITS = 16
_MAX_POSITION = 2**24  # key/query positions are compared as fp32 in the kernel
_MIN_TILES_PER_SPLIT = 2
# Live-tile budget per program: half the 192 KB UB, the other half for double buffering.
_UB_BUDGET = 96 * 1024
_RC_TILE_ELEMS = 4096  # reshape_and_cache: [BLOCK_H, HEAD_PAD] tile, 16 KB in fp32


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr,
    value_ptr,
    kc_ptr,
    vc_ptr,
    slot_ptr,
    num_tokens,
    num_heads,
    block_size,
    key_stride_t,
    key_stride_h,
    value_stride_t,
    value_stride_h,
    kc_stride_b,
    kc_stride_s,
    kc_stride_h,
    vc_stride_b,
    vc_stride_s,
    vc_stride_h,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_PAD)
    d_mask = offs_d < HEAD_SIZE
    for t in range(tl.program_id(0), num_tokens, tl.num_programs(0)):
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            blk = slot // block_size
            row = slot - blk * block_size
            kc_base = blk * kc_stride_b + row * kc_stride_s
            vc_base = blk * vc_stride_b + row * vc_stride_s
            k_src = tl.cast(t, tl.int64) * key_stride_t
            v_src = tl.cast(t, tl.int64) * value_stride_t
            for h0 in range(0, num_heads, BLOCK_H):
                heads = h0 + offs_h
                mask = (heads < num_heads)[:, None] & d_mask[None, :]
                k = tl.load(key_ptr + k_src + heads[:, None] * key_stride_h + offs_d[None, :], mask=mask)
                v = tl.load(value_ptr + v_src + heads[:, None] * value_stride_h + offs_d[None, :], mask=mask)
                tl.store(
                    kc_ptr + kc_base + heads[:, None] * kc_stride_h + offs_d[None, :],
                    k.to(kc_ptr.dtype.element_ty),
                    mask=mask,
                )
                tl.store(
                    vc_ptr + vc_base + heads[:, None] * vc_stride_h + offs_d[None, :],
                    v.to(vc_ptr.dtype.element_ty),
                    mask=mask,
                )


@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    cu_q_ptr,
    seqused_ptr,
    bt_ptr,
    alibi_ptr,
    sinks_ptr,
    ws_acc_ptr,
    ws_m_ptr,
    ws_l_ptr,
    num_seqs,
    num_q_tiles,
    num_kv_heads,
    num_segments,
    q_stride_t,
    q_stride_h,
    o_stride_t,
    o_stride_h,
    k_stride_b,
    k_stride_s,
    k_stride_h,
    v_stride_b,
    v_stride_s,
    v_stride_h,
    bt_stride,
    scale,
    softcap,
    window,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    QPK: tl.constexpr,
    QPK_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    USE_SINKS: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # Row r of a query tile = (token r // QPK_PAD, head r % QPK_PAD) of the tile's KV group;
    # used for masks only, memory is addressed through the 3-D (offs_qt, offs_qh) view.
    offs_r = tl.arange(0, BLOCK_M)
    r_tok = offs_r // QPK_PAD
    r_head = offs_r % QPK_PAD
    offs_qt = tl.arange(0, BLOCK_Q)
    offs_qh = tl.arange(0, QPK_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    d_mask = offs_d < HEAD_SIZE
    offs_n = tl.arange(0, TILE_N)
    offs_n_f = offs_n.to(tl.float32)
    num_q_heads = num_kv_heads * QPK
    total = num_q_tiles * num_kv_heads * num_segments
    for w in range(tl.program_id(0), total, tl.num_programs(0)):
        seg = w % num_segments
        rest = w // num_segments
        kvh = rest % num_kv_heads
        qt = rest // num_kv_heads
        # Sequence of tile qt: the last s with cu_q[s] // BLOCK_Q + s <= qt (scalar search).
        lo = num_seqs * 0
        hi = num_seqs - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            first_tile = tl.load(cu_q_ptr + mid).to(tl.int32) // BLOCK_Q + mid
            take = first_tile <= qt
            lo = tl.where(take, mid, lo)
            hi = tl.where(take, hi, mid - 1)
        seq = lo
        q_start = tl.load(cu_q_ptr + seq).to(tl.int32)
        q_len = tl.load(cu_q_ptr + seq + 1).to(tl.int32) - q_start
        tok0 = (qt - (q_start // BLOCK_Q + seq)) * BLOCK_Q
        if tok0 < q_len:
            seq_len = tl.load(seqused_ptr + seq).to(tl.int32)
            ctx = seq_len - q_len
            tok = tok0 + r_tok
            row_ok = (r_head < QPK) & (tok < q_len)
            # Positions are compared in fp32 (exact below 2**24, checked on the host): Ascend
            # vectorizes float compares, integer compares in compute fall back to scalar code.
            q_pos_f = (ctx + tok).to(tl.float32)
            row0 = (q_start + tok0).to(tl.int64)
            # 3-D [token, head, dim] addresses are affine per axis (rows r // QPK_PAD would make
            # the adapter scalarize the access); reshape to the 2-D rows the cube wants.
            tok3 = tok0 + offs_qt
            ok3 = ((tok3 < q_len)[:, None] & (offs_qh < QPK)[None, :])[:, :, None] & d_mask[None, None, :]
            head3 = kvh * QPK + offs_qh
            q3 = tl.load(
                q_ptr
                + row0 * q_stride_t
                + offs_qt[:, None, None] * q_stride_t
                + head3[None, :, None] * q_stride_h
                + offs_d[None, None, :],
                mask=ok3,
                other=0.0,
            )
            q = tl.reshape(q3, (BLOCK_M, HEAD_PAD))
            # Keys this tile's rows may see: [k_lo, k_hi).
            q_first = ctx + tok0
            q_last = ctx + tl.minimum(tok0 + BLOCK_Q, q_len) - 1
            if CAUSAL:
                k_hi = q_last + 1
            else:
                k_hi = seq_len
            k_lo = seq_len * 0
            if USE_WINDOW:
                k_lo = tl.maximum(q_first - window + 1, 0)
                if not CAUSAL:
                    k_hi = tl.minimum(k_hi, q_last + window)
            j_lo = k_lo // TILE_N
            j_hi = (k_hi + TILE_N - 1) // TILE_N
            if SPLIT:
                per_seg = (j_hi - j_lo + num_segments - 1) // num_segments
                j_lo = j_lo + seg * per_seg
                j_hi = tl.minimum(j_hi, j_lo + per_seg)

            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            if USE_SINKS:
                if not SPLIT:  # split: the reduction adds the sink once
                    sink = tl.load(sinks_ptr + head3, mask=offs_qh < QPK, other=float("-inf")).to(tl.float32)
                    m_i = tl.reshape(tl.broadcast_to(sink[None, :], (BLOCK_Q, QPK_PAD)), (BLOCK_M,))
                    m_i = tl.where(row_ok, m_i, float("-inf"))
                    l_i = tl.where(m_i > float("-inf"), 1.0, 0.0)
            if USE_ALIBI:
                slope = tl.load(alibi_ptr + head3, mask=offs_qh < QPK, other=0.0).to(tl.float32)
                slope = tl.reshape(tl.broadcast_to(slope[None, :], (BLOCK_Q, QPK_PAD)), (BLOCK_M,))
            acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
            seq_len_f = seq_len.to(tl.float32)
            ctx_f = ctx.to(tl.float32)
            window_f = tl.cast(window, tl.float32)
            bt_row = bt_ptr + tl.cast(seq, tl.int64) * bt_stride
            for j in range(j_lo, j_hi):
                k0 = j * TILE_N
                blk_idx = k0 // BLOCK_SIZE
                # One scalar block id per tile; the tile is contiguous inside that block.
                blk = tl.load(bt_row + blk_idx).to(tl.int64)
                in_blk = k0 - blk_idx * BLOCK_SIZE
                n_ok = (k0 + offs_n) < seq_len  # load/store masks vectorize as they are
                kv_mask = n_ok[:, None] & d_mask[None, :]
                k_base = blk * k_stride_b + kvh * k_stride_h + in_blk * k_stride_s
                v_base = blk * v_stride_b + kvh * v_stride_h + in_blk * v_stride_s
                k = tl.load(
                    k_ptr + k_base + offs_n[:, None] * k_stride_s + offs_d[None, :], mask=kv_mask, other=0.0
                )
                v = tl.load(
                    v_ptr + v_base + offs_n[:, None] * v_stride_s + offs_d[None, :], mask=kv_mask, other=0.0
                )
                s = tl.dot(q, tl.trans(k)) * scale
                if USE_SOFTCAP:
                    # tanh(y) = 1 - 2 / (exp(2y) + 1): saturates without inf/inf.
                    s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * (s / softcap)) + 1.0))
                kpos_f = offs_n_f + k0
                dist = q_pos_f[:, None] - kpos_f[None, :]  # query position - key position
                if CAUSAL:
                    visible = row_ok[:, None] & (dist >= 0.0)  # implies key < seqused_k
                else:
                    visible = row_ok[:, None] & (kpos_f < seq_len_f)[None, :]
                if USE_WINDOW:
                    visible = visible & (dist < window_f)
                    if not CAUSAL:
                        visible = visible & (dist > -window_f)
                s = tl.where(visible, s, float("-inf"))
                if USE_ALIBI:
                    s = s + slope[:, None] * (kpos_f - ctx_f)[None, :]
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
                p = tl.exp(s - m_safe[:, None])
                alpha = tl.exp(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new

            if SPLIT:
                # Workspace [token, head, segment, HEAD_PAD] (fp32), addressed per axis like q.
                ws_row0 = row0 * num_q_heads * num_segments
                ws_rows = (offs_qt[:, None] * num_q_heads + head3[None, :]) * num_segments + seg
                ok2 = (tok3 < q_len)[:, None] & (offs_qh < QPK)[None, :]
                tl.store(ws_m_ptr + ws_row0 + ws_rows, tl.reshape(m_i, (BLOCK_Q, QPK_PAD)), mask=ok2)
                tl.store(ws_l_ptr + ws_row0 + ws_rows, tl.reshape(l_i, (BLOCK_Q, QPK_PAD)), mask=ok2)
                tl.store(
                    ws_acc_ptr + ws_row0 * HEAD_PAD + ws_rows[:, :, None] * HEAD_PAD + offs_d[None, None, :],
                    tl.reshape(acc, (BLOCK_Q, QPK_PAD, HEAD_PAD)),
                    mask=ok2[:, :, None],
                )
            else:
                l_safe = tl.where(l_i > 0.0, l_i, 1.0)
                o = tl.reshape(acc / l_safe[:, None], (BLOCK_Q, QPK_PAD, HEAD_PAD))
                tl.store(
                    out_ptr
                    + row0 * o_stride_t
                    + offs_qt[:, None, None] * o_stride_t
                    + head3[None, :, None] * o_stride_h
                    + offs_d[None, None, :],
                    o.to(out_ptr.dtype.element_ty),
                    mask=ok3,
                )


@triton.jit
def _split_reduce_kernel(
    out_ptr,
    ws_acc_ptr,
    ws_m_ptr,
    ws_l_ptr,
    sinks_ptr,
    cu_q_ptr,
    num_seqs,
    num_tokens,
    num_q_heads,
    num_segments,
    o_stride_t,
    o_stride_h,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    SEG_PAD: tl.constexpr,
    USE_SINKS: tl.constexpr,
):
    offs_s = tl.arange(0, SEG_PAD)
    s_mask = offs_s < num_segments
    offs_d = tl.arange(0, HEAD_PAD)
    d_mask = offs_d < HEAD_SIZE
    valid_tokens = tl.load(cu_q_ptr + num_seqs).to(tl.int32)  # rows past it are padding
    for w in range(tl.program_id(0), num_tokens * num_q_heads, tl.num_programs(0)):
        t = w // num_q_heads
        h = w % num_q_heads
        if t < valid_tokens:
            row0 = (tl.cast(t, tl.int64) * num_q_heads + h) * num_segments
            m = tl.load(ws_m_ptr + row0 + offs_s, mask=s_mask, other=float("-inf"))
            l_seg = tl.load(ws_l_ptr + row0 + offs_s, mask=s_mask, other=0.0)
            m_max = tl.max(m, 0)
            if USE_SINKS:
                sink = tl.load(sinks_ptr + h).to(tl.float32)
                m_max = tl.maximum(m_max, sink)
            m_safe = tl.where(m_max > float("-inf"), m_max, 0.0)
            wgt = tl.exp(m - m_safe)
            l_tot = tl.sum(l_seg * wgt, 0)
            if USE_SINKS:
                l_tot += tl.exp(sink - m_safe)
            acc = tl.load(
                ws_acc_ptr + row0 * HEAD_PAD + offs_s[:, None] * HEAD_PAD + offs_d[None, :],
                mask=s_mask[:, None],
                other=0.0,
            )
            o = tl.sum(acc * wgt[:, None], 0) / tl.where(l_tot > 0.0, l_tot, 1.0)
            tl.store(
                out_ptr + tl.cast(t, tl.int64) * o_stride_t + h * o_stride_h + offs_d,
                o.to(out_ptr.dtype.element_ty),
                mask=d_mask,
            )


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def _ub_estimate(block_m: int, tile_n: int, head_pad: int, elem_bytes: int) -> int:
    """Bytes of one program's live tiles: Q, K, V in the data dtype; S, P, acc and the
    rescaled acc in fp32 (plus the PV product)."""
    return elem_bytes * (block_m * head_pad + 2 * tile_n * head_pad) + 4 * (
        2 * block_m * tile_n + 3 * block_m * head_pad
    )


def _largest_pow2_divisor(n: int) -> int:
    return n & -n


def _default_attention_config(head_pad: int, block_size: int, elem_bytes: int, block_m: int) -> dict:
    tile_n = min(_largest_pow2_divisor(block_size), 128)
    while tile_n > 16 and _ub_estimate(block_m, tile_n, head_pad, elem_bytes) > _UB_BUDGET:
        tile_n //= 2
    return {"BLOCK_M": block_m, "TILE_N": tile_n}


def _attention_launch_config(
    sku: str, head_size: int, block_size: int, dtype: torch.dtype, qpk: int, decode: bool
) -> dict:
    head_pad = triton.next_power_of_2(head_size)
    qpk_pad = triton.next_power_of_2(qpk)
    elem = 4 if dtype == torch.float32 else 2
    default = _default_attention_config(head_pad, block_size, elem, max(_MIN_BLOCK_M, qpk_pad))
    key = {
        "head_size": head_size,
        "block_size": block_size,
        "qpk": qpk,
        "dtype": str(dtype).removeprefix("torch."),
        "decode": decode,
    }
    cfg = lookup_config(sku, "unified_attention", key, default)
    tile_n = int(cfg["TILE_N"])
    if tile_n < 1 or tile_n & (tile_n - 1) or block_size % tile_n:
        raise ValueError(
            f"unified_attention config TILE_N={tile_n} must be a power of two dividing "
            f"block_size={block_size}"
        )
    # Decode tiles hold one real token; the cube still wants >= 16 rows, so the tile keeps the
    # minimum row count (its extra tokens are past the sequence's single query and masked).
    rows = _MIN_BLOCK_M if decode else max(_MIN_BLOCK_M, int(cfg["BLOCK_M"]))
    block_q = max(1, rows // qpk_pad)
    block_m = block_q * qpk_pad
    return {
        "BLOCK_Q": block_q,
        "BLOCK_M": block_m,
        "TILE_N": tile_n,
        "HEAD_PAD": head_pad,
        "QPK_PAD": qpk_pad,
    }


def _choose_splits(
    num_seqs: int, num_kv_heads: int, max_seqlen_q: int, max_seqlen_k: int, tile_n: int, cube_cores: int
) -> int:
    """Decode batches that leave cube cores idle cut each context into segments."""
    items = num_seqs * num_kv_heads
    if max_seqlen_q != 1 or items >= cube_cores:
        return 1
    by_cores = -(-cube_cores // items)
    by_length = max_seqlen_k // (tile_n * _MIN_TILES_PER_SPLIT)
    return max(1, min(by_cores, by_length, _MAX_SPLITS))


# ----------------------------------------------------------------------------------------------
# Host API
# ----------------------------------------------------------------------------------------------


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write K/V rows into the paged caches at `slot_mapping` (slot -1 = skip)."""
    check_tensor("key", key, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("value", value, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("key_cache", key_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("value_cache", value_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("slot_mapping", slot_mapping, dtypes=INDEX_DTYPES, ndim=1)
    check_same_device(
        key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping
    )
    num_blocks, block_size, num_heads, head_size = key_cache.shape
    if tuple(value_cache.shape) != tuple(key_cache.shape):
        raise ValueError(
            f"value_cache shape {tuple(value_cache.shape)} must equal key_cache shape "
            f"{tuple(key_cache.shape)}"
        )
    if key.shape[1:] != (num_heads, head_size):
        raise ValueError(
            f"key must be [tokens, {num_heads}, {head_size}] to match key_cache, got {tuple(key.shape)}"
        )
    if value.shape[1:] != (num_heads, head_size):
        raise ValueError(
            f"value must be [tokens, {num_heads}, {head_size}] to match value_cache, got {tuple(value.shape)}"
        )
    num_tokens = slot_mapping.shape[0]
    if key.shape[0] < num_tokens or value.shape[0] < num_tokens:
        raise ValueError(
            f"key/value need at least len(slot_mapping)={num_tokens} rows, "
            f"got {key.shape[0]} and {value.shape[0]}"
        )
    if head_size > _MAX_HEAD_SIZE * 2:
        raise ValueError(f"head_size must be <= {_MAX_HEAD_SIZE * 2}, got {head_size}")
    for name, t in (("key", key), ("value", value), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_last_dim_contiguous(name, t)
    if checks_enabled() and num_tokens:
        lo, hi = int(slot_mapping.min()), int(slot_mapping.max())
        if lo < -1 or hi >= num_blocks * block_size:
            raise ValueError(
                f"slot_mapping values must be -1 or in [0, {num_blocks * block_size}), got range [{lo}, {hi}]"
            )
    if num_tokens == 0:
        return
    head_pad = triton.next_power_of_2(head_size)
    cfg = lookup_config(
        current_device().sku.name,
        "reshape_and_cache",
        {"head_size": head_size, "num_kv_heads": num_heads},
        {"BLOCK_H": max(1, min(triton.next_power_of_2(num_heads), _RC_TILE_ELEMS // head_pad))},
    )
    with bf16_shim() as shim:
        k_in, v_in = shim.input(key[:num_tokens]), shim.input(value[:num_tokens])
        kc, vc = shim.output(key_cache), shim.output(value_cache)
        _reshape_and_cache_kernel[persistent_grid(num_tokens)](
            k_in, v_in, kc, vc, slot_mapping,
            num_tokens, num_heads, block_size,
            k_in.stride(0), k_in.stride(1), v_in.stride(0), v_in.stride(1),
            kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
            HEAD_SIZE=head_size, HEAD_PAD=head_pad, BLOCK_H=int(cfg["BLOCK_H"]),
        )  # fmt: skip


def _validate_attention(
    q, k_cache, v_cache, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k,
    softmax_scale, causal, window_size, block_table, softcap, alibi_slopes, sinks, num_kv_splits,
) -> tuple[int, int]:  # fmt: skip
    """Static checks (shapes, dtypes, devices) and, with checks on, the metadata's values.
    Returns (left window, number of sequences)."""
    check_tensor("q", q, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("k_cache", k_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("v_cache", v_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("out", out, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("cu_seqlens_q", cu_seqlens_q, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor("seqused_k", seqused_k, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor("block_table", block_table, dtypes=INDEX_DTYPES, ndim=2)
    if alibi_slopes is not None:
        check_tensor("alibi_slopes", alibi_slopes, dtypes=(torch.float32,), ndim=1)
    if sinks is not None:
        check_tensor("sinks", sinks, dtypes=FLOAT_DTYPES, ndim=1)
    check_same_device(
        q=q, k_cache=k_cache, v_cache=v_cache, out=out, cu_seqlens_q=cu_seqlens_q, seqused_k=seqused_k,
        block_table=block_table, alibi_slopes=alibi_slopes, sinks=sinks,
    )  # fmt: skip
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(
            f"k_cache/v_cache must have q's dtype {q.dtype}, got {k_cache.dtype} and {v_cache.dtype}"
        )
    num_tokens, num_q_heads, head_size = q.shape
    _, block_size, num_kv_heads, cache_head = k_cache.shape
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(
            f"v_cache shape {tuple(v_cache.shape)} must equal k_cache shape {tuple(k_cache.shape)}"
        )
    if cache_head != head_size:
        raise ValueError(f"k_cache head_size {cache_head} must equal q's head_size {head_size}")
    if not 1 <= head_size <= _MAX_HEAD_SIZE:
        raise ValueError(f"head_size must be in [1, {_MAX_HEAD_SIZE}], got {head_size}")
    if num_q_heads % num_kv_heads:
        raise ValueError(
            f"q's head count {num_q_heads} must be a multiple of k_cache's KV head count {num_kv_heads}"
        )
    if tuple(out.shape) != tuple(q.shape):
        raise ValueError(f"out shape {tuple(out.shape)} must equal q shape {tuple(q.shape)}")
    if block_size < 1 or _largest_pow2_divisor(block_size) < 16:
        raise ValueError(f"k_cache block_size must be a multiple of 16, got {block_size}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        check_last_dim_contiguous(name, t)
    num_seqs = seqused_k.shape[0]
    if cu_seqlens_q.shape[0] != num_seqs + 1:
        raise ValueError(
            f"cu_seqlens_q must have len(seqused_k) + 1 = {num_seqs + 1} entries, got {cu_seqlens_q.shape[0]}"
        )
    if block_table.shape[0] < num_seqs:
        raise ValueError(f"block_table must have a row per sequence ({num_seqs}), got {block_table.shape[0]}")
    if block_table.stride(1) != 1:
        raise ValueError("block_table must be contiguous along its last dim")
    for name, t, n in (("alibi_slopes", alibi_slopes, num_q_heads), ("sinks", sinks, num_q_heads)):
        if t is not None and t.shape[0] != n:
            raise ValueError(f"{name} must have one entry per query head ({n}), got {t.shape[0]}")
    check_positive_int("max_seqlen_q", max_seqlen_q, minimum=0)
    check_positive_int("max_seqlen_k", max_seqlen_k, minimum=0)
    if max_seqlen_k >= _MAX_POSITION:
        raise ValueError(
            f"max_seqlen_k must be < {_MAX_POSITION} (positions are compared in fp32), got {max_seqlen_k}"
        )
    if not isinstance(softmax_scale, int | float) or isinstance(softmax_scale, bool):
        raise TypeError(f"softmax_scale must be a float, got {type(softmax_scale).__name__}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(softcap, int | float) or isinstance(softcap, bool) or softcap < 0:
        raise ValueError(f"softcap must be a float >= 0 (0 = off), got {softcap!r}")
    if (
        not isinstance(window_size, Sequence)
        or len(window_size) != 2
        or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window_size)
    ):
        raise ValueError(f"window_size must be a (left, right) pair of ints >= -1, got {window_size!r}")
    if num_kv_splits is not None:
        check_positive_int("num_kv_splits", num_kv_splits)
        if num_kv_splits > 64:
            raise ValueError(f"num_kv_splits must be <= 64, got {num_kv_splits}")

    if checks_enabled() and num_seqs:
        cu = cu_seqlens_q.tolist()
        used = seqused_k.tolist()
        q_lens = [b - a for a, b in zip(cu, cu[1:], strict=False)]
        if cu[0] != 0 or min(q_lens) < 0 or cu[-1] > num_tokens:
            raise ValueError(
                f"cu_seqlens_q must start at 0, not decrease and end <= {num_tokens} (q rows), got {cu}"
            )
        if max(q_lens) > max_seqlen_q:
            raise ValueError(f"a query length ({max(q_lens)}) exceeds max_seqlen_q={max_seqlen_q}")
        bad = [s for s in range(num_seqs) if used[s] < q_lens[s]]
        if bad:
            s = bad[0]
            raise ValueError(
                f"seqused_k[{s}]={used[s]} is smaller than the sequence's query length {q_lens[s]}"
            )
        if max(used) > max_seqlen_k:
            raise ValueError(f"a seqused_k value ({max(used)}) exceeds max_seqlen_k={max_seqlen_k}")
        need = [-(-u // block_size) for u in used]
        if max(need) > block_table.shape[1]:
            s = need.index(max(need))
            raise ValueError(
                f"block_table has {block_table.shape[1]} entries per sequence but seqused_k[{s}]={used[s]} "
                f"needs {need[s]} blocks of {block_size}"
            )
        num_blocks = k_cache.shape[0]
        cols = torch.arange(block_table.shape[1], device=block_table.device)
        in_use = cols[None, :] < torch.tensor(need, device=block_table.device)[:, None]
        ids = block_table[:num_seqs][in_use]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
            raise ValueError(
                f"block_table entries in use must be in [0, {num_blocks}), "
                f"got [{int(ids.min())}, {int(ids.max())}]"
            )
    return window_size[0], num_seqs


def unified_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    seqused_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
    window_size: tuple[int, int],
    block_table: torch.Tensor,
    softcap: float,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    *,
    num_kv_splits: int | None = None,
) -> torch.Tensor:
    """vLLM's unified paged attention for a mixed prefill/decode batch; writes and returns `out`."""
    left, num_seqs = _validate_attention(
        q, k_cache, v_cache, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k,
        softmax_scale, causal, window_size, block_table, softcap, alibi_slopes, sinks, num_kv_splits,
    )  # fmt: skip
    num_tokens, num_q_heads, head_size = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if num_tokens == 0 or num_seqs == 0 or max_seqlen_q == 0:
        return out
    qpk = num_q_heads // num_kv_heads
    device = current_device()
    cfg = _attention_launch_config(
        device.sku.name, head_size, block_size, q.dtype, qpk, decode=max_seqlen_q == 1
    )
    splits = num_kv_splits or _choose_splits(
        num_seqs, num_kv_heads, max_seqlen_q, max_seqlen_k, cfg["TILE_N"], device.cube_cores
    )
    num_q_tiles = num_tokens // cfg["BLOCK_Q"] + num_seqs
    head_pad = cfg["HEAD_PAD"]
    split = splits > 1
    with bf16_shim() as shim:
        q_in, k_in, v_in = shim.input(q), shim.input(k_cache), shim.input(v_cache)
        o = shim.output(out)
        sinks_in = shim.input(sinks)
        dummy = torch.empty(1, dtype=torch.float32, device=q.device)
        if split:
            ws_acc = torch.empty(
                num_tokens * num_q_heads * splits * head_pad, dtype=torch.float32, device=q.device
            )
            ws_m = torch.empty(num_tokens * num_q_heads * splits, dtype=torch.float32, device=q.device)
            ws_l = torch.empty_like(ws_m)
        else:
            ws_acc = ws_m = ws_l = dummy
        work = num_q_tiles * num_kv_heads * splits
        _attention_kernel[persistent_grid(work, uses_cube=True)](
            q_in, k_in, v_in, o, cu_seqlens_q, seqused_k, block_table,
            alibi_slopes if alibi_slopes is not None else dummy,
            sinks_in if sinks is not None else dummy,
            ws_acc, ws_m, ws_l,
            num_seqs, num_q_tiles, num_kv_heads, splits,
            q_in.stride(0), q_in.stride(1), o.stride(0), o.stride(1),
            k_in.stride(0), k_in.stride(1), k_in.stride(2),
            v_in.stride(0), v_in.stride(1), v_in.stride(2),
            block_table.stride(0),
            float(softmax_scale), float(softcap), left + 1,
            HEAD_SIZE=head_size, HEAD_PAD=head_pad, QPK=qpk, QPK_PAD=cfg["QPK_PAD"],
            BLOCK_Q=cfg["BLOCK_Q"], BLOCK_M=cfg["BLOCK_M"], BLOCK_SIZE=block_size, TILE_N=cfg["TILE_N"],
            CAUSAL=causal, USE_WINDOW=left >= 0, USE_SOFTCAP=softcap > 0,
            USE_ALIBI=alibi_slopes is not None, USE_SINKS=sinks is not None, SPLIT=split,
        )  # fmt: skip
        if split:
            _split_reduce_kernel[persistent_grid(num_tokens * num_q_heads)](
                o, ws_acc, ws_m, ws_l, sinks_in if sinks is not None else dummy, cu_seqlens_q,
                num_seqs, num_tokens, num_q_heads, splits, o.stride(0), o.stride(1),
                HEAD_SIZE=head_size, HEAD_PAD=head_pad, SEG_PAD=triton.next_power_of_2(splits),
                USE_SINKS=sinks is not None,
            )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------
# Torch references (plain and obviously correct; float64)
# ----------------------------------------------------------------------------------------------


def reshape_and_cache_reference(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    block_size = key_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        key_cache[slot // block_size, slot % block_size] = key[t].to(key_cache.dtype)
        value_cache[slot // block_size, slot % block_size] = value[t].to(value_cache.dtype)


def unified_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqused_k: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    window_size: tuple[int, int],
    block_table: torch.Tensor,
    softcap: float,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sequence: gather its keys/values block by block, then dense masked softmax attention
    in float64. Returns a float64 `[T, Hq, D]` tensor; rows of no sequence stay NaN."""
    num_tokens, num_q_heads, head_size = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    qpk = num_q_heads // num_kv_heads
    out = torch.full((num_tokens, num_q_heads, head_size), float("nan"), dtype=torch.float64)
    cu = cu_seqlens_q.tolist()
    for s, seq_len in enumerate(seqused_k.tolist()):
        q_len = cu[s + 1] - cu[s]
        if q_len == 0:
            continue
        n_blocks = -(-seq_len // block_size)
        blocks = block_table[s, :n_blocks].long()
        keys = k_cache[blocks].reshape(-1, num_kv_heads, head_size)[:seq_len].double()
        values = v_cache[blocks].reshape(-1, num_kv_heads, head_size)[:seq_len].double()
        ctx = seq_len - q_len
        q_pos = torch.arange(q_len)[:, None] + ctx
        k_pos = torch.arange(seq_len)[None, :]
        visible = torch.ones(q_len, seq_len, dtype=torch.bool)
        if causal:
            visible &= k_pos <= q_pos
        if window_size[0] >= 0:
            width = window_size[0] + 1
            visible &= (q_pos - k_pos) < width
            if not causal:
                visible &= (k_pos - q_pos) < width
        for h in range(num_q_heads):
            qh = q[cu[s] : cu[s + 1], h].double()
            scores = softmax_scale * qh @ keys[:, h // qpk].T
            if softcap > 0:
                scores = softcap * torch.tanh(scores / softcap)
            scores = scores.masked_fill(~visible, float("-inf"))
            if alibi_slopes is not None:
                scores = scores + float(alibi_slopes[h]) * (k_pos - ctx).double()
            if sinks is not None:
                sink_col = torch.full((q_len, 1), float(sinks[h]), dtype=torch.float64)
                probs = torch.softmax(torch.cat([scores, sink_col], dim=1), dim=1)[:, :-1]
            else:
                probs = torch.softmax(scores, dim=1)
            out[cu[s] : cu[s + 1], h] = probs @ values[:, h // qpk]
    return out


# ----------------------------------------------------------------------------------------------
# Lowering variants and self check
# ----------------------------------------------------------------------------------------------


def _attention_signature(dtype: torch.dtype) -> dict[str, str]:
    t = "*" + triton_type_name(dtype)
    sig = {
        "q_ptr": t,
        "k_ptr": t,
        "v_ptr": t,
        "out_ptr": t,
        "cu_q_ptr": "*i32",
        "seqused_ptr": "*i32",
        "bt_ptr": "*i32",
    }
    sig |= {
        "alibi_ptr": "*fp32",
        "sinks_ptr": "*fp32",
        "ws_acc_ptr": "*fp32",
        "ws_m_ptr": "*fp32",
        "ws_l_ptr": "*fp32",
    }
    for name in (
        "num_seqs", "num_q_tiles", "num_kv_heads", "num_segments", "q_stride_t", "q_stride_h", "o_stride_t",
        "o_stride_h", "k_stride_b", "k_stride_s", "k_stride_h", "v_stride_b", "v_stride_s", "v_stride_h",
        "bt_stride",
    ):  # fmt: skip
        sig[name] = "i32"
    sig |= {"scale": "fp32", "softcap": "fp32", "window": "i32"}
    return sig


# (label, dtype, head_size, block_size, qpk, decode, split, features)
_LOWERING_ATTENTION = (
    ("prefill_h128_b128_gqa4_fp16", torch.float16, 128, 128, 4, False, False, ()),
    ("prefill_h128_b128_gqa4_bf16", torch.bfloat16, 128, 128, 4, False, False, ()),
    ("prefill_h64_b16_mha_fp32", torch.float32, 64, 16, 1, False, False, ()),
    (
        "prefill_h80_b64_gqa8_fp16_window_softcap_sinks",
        torch.float16,
        80,
        64,
        8,
        False,
        False,
        ("window", "softcap", "sinks"),
    ),
    ("prefill_h256_b128_gqa2_bf16_alibi", torch.bfloat16, 256, 128, 2, False, False, ("alibi",)),
    ("decode_split_h128_b128_gqa8_bf16", torch.bfloat16, 128, 128, 8, True, True, ()),
)


def lowering_requests(sku: str) -> list[LoweringRequest]:
    """Default-config variants of the three kernels for `sku`."""
    reqs = []
    for label, dtype, head_size, block_size, qpk, decode, split, feats in _LOWERING_ATTENTION:
        cfg = _attention_launch_config(sku, head_size, block_size, dtype, qpk, decode)
        consts = {
            "HEAD_SIZE": head_size, "HEAD_PAD": cfg["HEAD_PAD"], "QPK": qpk, "QPK_PAD": cfg["QPK_PAD"],
            "BLOCK_Q": cfg["BLOCK_Q"], "BLOCK_M": cfg["BLOCK_M"], "BLOCK_SIZE": block_size,
            "TILE_N": cfg["TILE_N"],
            "CAUSAL": True, "USE_WINDOW": "window" in feats, "USE_SOFTCAP": "softcap" in feats,
            "USE_ALIBI": "alibi" in feats, "USE_SINKS": "sinks" in feats, "SPLIT": split,
        }  # fmt: skip
        reqs.append(
            LoweringRequest(
                kernel_ref(_attention_kernel),
                _attention_signature(dtype),
                consts,
                sku,
                f"unified_attention_{label}",
            )
        )
    for dtype in (torch.float16, torch.bfloat16):
        t = "*" + triton_type_name(dtype)
        sig = {
            "out_ptr": t,
            "ws_acc_ptr": "*fp32",
            "ws_m_ptr": "*fp32",
            "ws_l_ptr": "*fp32",
            "sinks_ptr": "*fp32",
            "cu_q_ptr": "*i32",
        }
        sig |= {
            n: "i32"
            for n in ("num_seqs", "num_tokens", "num_q_heads", "num_segments", "o_stride_t", "o_stride_h")
        }
        consts = {"HEAD_SIZE": 128, "HEAD_PAD": 128, "SEG_PAD": _MAX_SPLITS, "USE_SINKS": True}
        label = f"split_reduce_h128_{triton_type_name(dtype)}"
        reqs.append(LoweringRequest(kernel_ref(_split_reduce_kernel), sig, consts, sku, label))
    for dtype, head_size, heads in (
        (torch.float16, 128, 8),
        (torch.bfloat16, 80, 2),
        (torch.float32, 256, 4),
    ):
        t = "*" + triton_type_name(dtype)
        sig = {"key_ptr": t, "value_ptr": t, "kc_ptr": t, "vc_ptr": t, "slot_ptr": "*i64"}
        sig |= {
            n: "i32"
            for n in (
                "num_tokens", "num_heads", "block_size", "key_stride_t", "key_stride_h", "value_stride_t",
                "value_stride_h", "kc_stride_b", "kc_stride_s", "kc_stride_h", "vc_stride_b", "vc_stride_s",
                "vc_stride_h",
            )
        }  # fmt: skip
        head_pad = triton.next_power_of_2(head_size)
        consts = {
            "HEAD_SIZE": head_size,
            "HEAD_PAD": head_pad,
            "BLOCK_H": max(1, min(triton.next_power_of_2(heads), _RC_TILE_ELEMS // head_pad)),
        }
        label = f"reshape_and_cache_h{head_size}_{triton_type_name(dtype)}"
        reqs.append(LoweringRequest(kernel_ref(_reshape_and_cache_kernel), sig, consts, sku, label))
    return reqs


def make_paged_case(
    q_lens: Sequence[int],
    kv_lens: Sequence[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    *,
    extra_blocks: int = 0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random paged batch: shuffled physical blocks plus 3 spare ones; `extra_blocks` unused
    trailing block-table entries per sequence point at spare blocks. Every cache row no
    sequence owns (spare blocks, the tail of each last block) holds NaN, so a kernel that reads
    past a sequence's keys, or a trailing table entry, turns its output NaN. Shared by tests and
    self_check."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in kv_lens]
    width = max(need + [1]) + extra_blocks
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    spare = perm[sum(need) :]
    table = spare[torch.randint(0, len(spare), (len(kv_lens), width), generator=g)]
    owned = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    used = 0
    for s, (n, kv_len) in enumerate(zip(need, kv_lens, strict=True)):
        table[s, :n] = perm[used : used + n]
        for i in range(n):
            owned[int(perm[used + i]), : min(block_size, kv_len - i * block_size)] = True
        used += n
    cu = torch.tensor(
        [0, *torch.tensor(list(q_lens), dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32
    )
    total = int(cu[-1])
    q = torch.randn(total, num_q_heads, head_size, generator=g).to(dtype)
    caches = []
    for _ in range(2):
        cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, generator=g).to(dtype)
        cache[~owned] = float("nan")
        caches.append(cache)
    return {
        "q": q,
        "k_cache": caches[0],
        "v_cache": caches[1],
        "cu_seqlens_q": cu,
        "seqused_k": torch.tensor(list(kv_lens), dtype=torch.int32),
        "block_table": table,
    }


def self_check() -> list[CheckResult]:
    """Small cases on this backend against the torch reference (fast on the interpreter)."""
    results = []
    cases = (
        ("mixed_gqa2_h64_b16_fp32", [3, 1, 0], [20, 33, 5], 4, 2, 64, 16, torch.float32, None, 1e-4),
        ("decode_split3_h80_b32_fp16", [1, 1], [70, 9], 2, 1, 80, 32, torch.float16, 3, 1e-2),
    )
    for name, q_lens, kv_lens, hq, hkv, d, bs, dtype, splits, atol in cases:
        c = make_paged_case(q_lens, kv_lens, hq, hkv, d, bs, dtype, extra_blocks=1)
        out = torch.zeros_like(c["q"])
        scale = d**-0.5
        unified_attention(
            c["q"], c["k_cache"], c["v_cache"], out, c["cu_seqlens_q"], max(q_lens), c["seqused_k"],
            max(kv_lens),
            scale, True, (-1, -1), c["block_table"], 0.0, num_kv_splits=splits,
        )  # fmt: skip
        ref = unified_attention_reference(
            c["q"],
            c["k_cache"],
            c["v_cache"],
            c["cu_seqlens_q"],
            c["seqused_k"],
            scale,
            True,
            (-1, -1),
            c["block_table"],
            0.0,
        )
        results.append(compare("unified_attention", name, out.double(), ref, atol))
    g = torch.Generator().manual_seed(3)
    kv = torch.zeros(6, 2, 16, 2, 96, dtype=torch.float16)  # vLLM 0.32's packed layout
    key, value = torch.randn(5, 2, 96, generator=g).half(), torch.randn(5, 2, 96, generator=g).half()
    slots = torch.tensor([17, -1, 0, 95, 40], dtype=torch.int64)
    expect = kv.clone()
    reshape_and_cache_reference(key, value, expect[:, 0], expect[:, 1], slots)
    reshape_and_cache(key, value, kv[:, 0], kv[:, 1], slots)
    results.append(compare("reshape_and_cache", "packed_h96_fp16", kv, expect, 0.0))
    return results
