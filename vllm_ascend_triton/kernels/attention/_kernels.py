"""The @triton.jit bodies of the attention family (design notes: the package docstring)."""

import triton
import triton.language as tl

from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  # isort: skip  (VAT_BACKEND before @triton.jit)

from vllm_ascend_triton.kernels.paged.jit import (  # noqa: E402
    kv_tile_block,
    merge_segments,
    query_tile_sequence,
    segment_tiles,
    slot_position,
    softmax_step,
    store_normalized,
)


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
    num_slots,
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
        ok, blk, row = slot_position(slot_ptr, t, num_slots, block_size)
        if ok:  # -1 (vLLM's skip) and slots outside the cache write nothing
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
    num_tokens,
    num_blocks,
    max_keys,
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
        seq, q_start, q_len, tok0 = query_tile_sequence(cu_q_ptr, num_seqs, qt, BLOCK_Q)
        # Rows that exist in q/out whatever cu_seqlens_q says (it is not range-checked with checks
        # off): positions still follow q_len, memory follows q_rows.
        q_rows = tl.minimum(q_len, num_tokens - q_start)
        if (tok0 >= 0) & (tok0 < q_rows) & (q_start >= 0):
            seq_len = tl.load(seqused_ptr + seq).to(tl.int32)
            ctx = seq_len - q_len
            tok = tok0 + r_tok
            row_ok = (r_head < QPK) & (tok < q_rows)
            # Positions are compared in fp32 (exact below 2**24, checked on the host): Ascend
            # vectorizes float compares, integer compares in compute fall back to scalar code.
            q_pos_f = (ctx + tok).to(tl.float32)
            row0 = (q_start + tok0).to(tl.int64)
            # 3-D [token, head, dim] addresses are affine per axis (rows r // QPK_PAD would make
            # the adapter scalarize the access); reshape to the 2-D rows the cube wants.
            tok3 = tok0 + offs_qt
            ok3 = ((tok3 < q_rows)[:, None] & (offs_qh < QPK)[None, :])[:, :, None] & d_mask[None, None, :]
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
            q_last = ctx + tl.minimum(tok0 + BLOCK_Q, q_rows) - 1
            if CAUSAL:
                k_hi = q_last + 1
            else:
                k_hi = seq_len
            k_lo = seq_len * 0
            if USE_WINDOW:
                k_lo = tl.maximum(q_first - window + 1, 0)
                if not CAUSAL:
                    k_hi = tl.minimum(k_hi, q_last + window)
            # Keys past what the block table covers (seqused_k too large) are never looked up.
            k_hi = tl.minimum(k_hi, max_keys)
            j_lo = k_lo // TILE_N
            j_hi = (k_hi + TILE_N - 1) // TILE_N
            if SPLIT:
                j_lo, j_hi = segment_tiles(j_lo, j_hi, seg, num_segments)

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
                # One scalar block id per tile (clamped; blk_ok masks the tile out otherwise).
                blk, blk_ok, in_blk = kv_tile_block(bt_row, j, num_blocks, TILE_N, BLOCK_SIZE)
                # Only keys some row of the tile may see are loaded (others read as 0), so a
                # non-finite value in a key nobody here sees cannot reach the P.V product.
                k_idx = k0 + offs_n
                n_ok = (k_idx >= k_lo) & (k_idx < k_hi) & (k_idx < seq_len) & blk_ok
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
                visible = visible & blk_ok
                s = tl.where(visible, s, float("-inf"))
                if USE_ALIBI:
                    s = s + slope[:, None] * (kpos_f - ctx_f)[None, :]
                p, alpha, m_i, l_i = softmax_step(s, m_i, l_i)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)

            if SPLIT:
                # Workspace [token, head, segment, HEAD_PAD] (fp32), addressed per axis like q.
                ws_row0 = row0 * num_q_heads * num_segments
                ws_rows = (offs_qt[:, None] * num_q_heads + head3[None, :]) * num_segments + seg
                ok2 = (tok3 < q_rows)[:, None] & (offs_qh < QPK)[None, :]
                tl.store(ws_m_ptr + ws_row0 + ws_rows, tl.reshape(m_i, (BLOCK_Q, QPK_PAD)), mask=ok2)
                tl.store(ws_l_ptr + ws_row0 + ws_rows, tl.reshape(l_i, (BLOCK_Q, QPK_PAD)), mask=ok2)
                tl.store(
                    ws_acc_ptr + ws_row0 * HEAD_PAD + ws_rows[:, :, None] * HEAD_PAD + offs_d[None, None, :],
                    tl.reshape(acc, (BLOCK_Q, QPK_PAD, HEAD_PAD)),
                    mask=ok2[:, :, None],
                )
            else:
                store_normalized(
                    out_ptr, row0, offs_qt, head3, offs_d, acc, l_i, o_stride_t, o_stride_h, ok3,
                    BLOCK_Q, QPK_PAD, HEAD_PAD,
                )  # fmt: skip


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
            sink = 0.0
            if USE_SINKS:
                sink = tl.load(sinks_ptr + h).to(tl.float32)
            o, _, _ = merge_segments(
                ws_m_ptr, ws_l_ptr, ws_acc_ptr, row0, offs_s, s_mask, offs_d, s_mask[:, None], sink,
                HEAD_PAD, USE_SINKS,
            )  # fmt: skip
            tl.store(
                out_ptr + tl.cast(t, tl.int64) * o_stride_t + h * o_stride_h + offs_d,
                o.to(out_ptr.dtype.element_ty),
                mask=d_mask,
            )
