"""The @triton.jit bodies of the MLA family (design notes: the package docstring)."""

import triton
import triton.language as tl

from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  # isort: skip  (VAT_BACKEND before @triton.jit)

from vllm_ascend_triton.kernels.paged.jit import (  # noqa: E402
    kv_tile_block,
    log_sum_exp,
    merge_segments,
    query_tile_sequence,
    safe_denominator,
    segment_tiles,
    slot_position,
    softmax_step,
    store_normalized,
)


@triton.jit
def _concat_and_cache_mla_kernel(
    kvc_ptr,
    kpe_ptr,
    cache_ptr,
    slot_ptr,
    num_tokens,
    block_size,
    num_slots,
    kvc_stride_t,
    kpe_stride_t,
    c_stride_b,
    c_stride_s,
    LORA: tl.constexpr,
    LORA_PAD: tl.constexpr,
    ROPE: tl.constexpr,
    ROPE_PAD: tl.constexpr,
):
    offs_c = tl.arange(0, LORA_PAD)
    offs_r = tl.arange(0, ROPE_PAD)
    c_mask = offs_c < LORA
    r_mask = offs_r < ROPE
    for t in range(tl.program_id(0), num_tokens, tl.num_programs(0)):
        ok, blk, row = slot_position(slot_ptr, t, num_slots, block_size)
        if ok:  # -1 (vLLM's skip) and slots outside the cache write nothing
            dst = cache_ptr + blk * c_stride_b + row * c_stride_s
            t64 = tl.cast(t, tl.int64)
            kvc = tl.load(kvc_ptr + t64 * kvc_stride_t + offs_c, mask=c_mask)
            kpe = tl.load(kpe_ptr + t64 * kpe_stride_t + offs_r, mask=r_mask)
            tl.store(dst + offs_c, kvc.to(cache_ptr.dtype.element_ty), mask=c_mask)
            tl.store(dst + LORA + offs_r, kpe.to(cache_ptr.dtype.element_ty), mask=r_mask)


@triton.jit
def _mla_decode_kernel(
    q_ptr,
    cache_ptr,
    out_ptr,
    lse_ptr,
    bt_ptr,
    seqlens_ptr,
    ws_acc_ptr,
    ws_m_ptr,
    ws_l_ptr,
    num_seqs,
    num_heads,
    num_segments,
    num_blocks,
    max_keys,
    q_stride_t,
    q_stride_h,
    o_stride_t,
    o_stride_h,
    c_stride_b,
    c_stride_s,
    bt_stride,
    scale,
    LORA: tl.constexpr,
    LORA_PAD: tl.constexpr,
    ROPE: tl.constexpr,
    ROPE_PAD: tl.constexpr,
    KC: tl.constexpr,
    DV: tl.constexpr,
    QL: tl.constexpr,
    QL_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    SPLIT: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    # Rows r of a tile = (query token r // BLOCK_H of the sequence, head r % BLOCK_H of the head
    # group); memory is addressed through the 3-D [QL_PAD, BLOCK_H, dim] view, affine per axis.
    NUM_DV: tl.constexpr = LORA_PAD // DV
    offs_r = tl.arange(0, BLOCK_M)
    r_tok = offs_r // BLOCK_H
    offs_qt = tl.arange(0, QL_PAD)
    offs_qh = tl.arange(0, BLOCK_H)
    offs_kc = tl.arange(0, KC)
    offs_rp = tl.arange(0, ROPE_PAD)
    rp_mask = offs_rp < ROPE
    offs_dv = tl.arange(0, DV)
    offs_n = tl.arange(0, TILE_N)
    offs_n_f = offs_n.to(tl.float32)
    num_hg = (num_heads + BLOCK_H - 1) // BLOCK_H
    total = num_seqs * num_hg * num_segments * NUM_DV
    for w in range(tl.program_id(0), total, tl.num_programs(0)):
        vc = w % NUM_DV
        rest = w // NUM_DV
        seg = rest % num_segments
        rest = rest // num_segments
        hg = rest % num_hg
        seq = rest // num_hg
        heads = hg * BLOCK_H + offs_qh
        h_ok = heads < num_heads
        tok_ok = offs_qt < QL
        ok2 = tok_ok[:, None] & h_ok[None, :]
        row0 = tl.cast(seq, tl.int64) * QL  # first query row of the sequence
        q_base = (
            q_ptr
            + row0 * q_stride_t
            + offs_qt[:, None, None] * q_stride_t
            + heads[None, :, None] * q_stride_h
        )
        seq_len = tl.load(seqlens_ptr + seq).to(tl.int32)
        # Row t of the sequence's QL tokens sits at position seq_len - QL + t: it sees keys
        # k < seq_len - QL + 1 + t (causal within the new tokens; decode: all seq_len keys).
        lim_f = (seq_len - QL + 1 + r_tok).to(tl.float32)
        row_ok = tl.reshape(ok2, (BLOCK_M,))
        k_hi = tl.minimum(seq_len, max_keys)  # keys past the block table are never looked up
        j_lo = seq_len * 0
        j_hi = (k_hi + TILE_N - 1) // TILE_N
        if SPLIT:
            j_lo, j_hi = segment_tiles(j_lo, j_hi, seg, num_segments)
        q_r = tl.reshape(
            tl.load(
                q_base + LORA + offs_rp[None, None, :],
                mask=ok2[:, :, None] & rp_mask[None, None, :],
                other=0.0,
            ),
            (BLOCK_M, ROPE_PAD),
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, DV], tl.float32)
        dv_cols = vc * DV + offs_dv
        dv_mask = dv_cols < LORA
        bt_row = bt_ptr + tl.cast(seq, tl.int64) * bt_stride
        for j in range(j_lo, j_hi):
            k0 = j * TILE_N
            # One scalar block id per tile (clamped; blk_ok masks the tile out otherwise).
            blk, blk_ok, in_blk = kv_tile_block(bt_row, j, num_blocks, TILE_N, BLOCK_SIZE)
            n_ok = ((k0 + offs_n) < k_hi) & blk_ok
            base = cache_ptr + blk * c_stride_b + (in_blk + offs_n[:, None]) * c_stride_s
            # Scores over the latent in KC-wide chunks (small live tiles), then the rope part.
            s = tl.zeros([BLOCK_M, TILE_N], tl.float32)
            for c0 in tl.static_range(0, LORA_PAD, KC):
                cols = c0 + offs_kc
                c_mask = cols < LORA
                q_c = tl.reshape(
                    tl.load(
                        q_base + cols[None, None, :], mask=ok2[:, :, None] & c_mask[None, None, :], other=0.0
                    ),
                    (BLOCK_M, KC),
                )
                k_c = tl.load(base + cols[None, :], mask=n_ok[:, None] & c_mask[None, :], other=0.0)
                s += tl.dot(q_c, tl.trans(k_c))
            k_r = tl.load(base + LORA + offs_rp[None, :], mask=n_ok[:, None] & rp_mask[None, :], other=0.0)
            s += tl.dot(q_r, tl.trans(k_r))
            s = s * scale
            kpos_f = offs_n_f + k0
            visible = row_ok[:, None] & (kpos_f[None, :] < lim_f[:, None]) & n_ok[None, :]
            s = tl.where(visible, s, float("-inf"))
            p, alpha, m_i, l_i = softmax_step(s, m_i, l_i)
            # Values are the latent itself (its DV-wide column chunk of this work item).
            v = tl.load(base + dv_cols[None, :], mask=n_ok[:, None] & dv_mask[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)

        ok3 = ok2[:, :, None] & dv_mask[None, None, :]
        if SPLIT:
            # Workspace [row, head, segment, LORA_PAD] (fp32); m and l [row, head, segment].
            ws_rows = ((row0 + offs_qt[:, None]) * num_heads + heads[None, :]) * num_segments + seg
            if vc == 0:
                tl.store(ws_m_ptr + ws_rows, tl.reshape(m_i, (QL_PAD, BLOCK_H)), mask=ok2)
                tl.store(ws_l_ptr + ws_rows, tl.reshape(l_i, (QL_PAD, BLOCK_H)), mask=ok2)
            tl.store(
                ws_acc_ptr + ws_rows[:, :, None] * LORA_PAD + dv_cols[None, None, :],
                tl.reshape(acc, (QL_PAD, BLOCK_H, DV)),
                mask=ok3,
            )
        else:
            store_normalized(
                out_ptr, row0, offs_qt, heads, dv_cols, acc, l_i, o_stride_t, o_stride_h, ok3,
                QL_PAD, BLOCK_H, DV,
            )  # fmt: skip
            if WRITE_LSE:
                if vc == 0:
                    tl.store(
                        lse_ptr + (row0 + offs_qt[:, None]) * num_heads + heads[None, :],
                        tl.reshape(log_sum_exp(m_i, l_i), (QL_PAD, BLOCK_H)),
                        mask=ok2,
                    )


@triton.jit
def _mla_decode_reduce_kernel(
    out_ptr,
    lse_ptr,
    ws_acc_ptr,
    ws_m_ptr,
    ws_l_ptr,
    num_rows,
    num_heads,
    num_segments,
    o_stride_t,
    o_stride_h,
    LORA: tl.constexpr,
    LORA_PAD: tl.constexpr,
    SEG_PAD: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    offs_s = tl.arange(0, SEG_PAD)
    s_mask = offs_s < num_segments
    offs_d = tl.arange(0, LORA_PAD)
    d_mask = offs_d < LORA
    for w in range(tl.program_id(0), num_rows * num_heads, tl.num_programs(0)):
        t = w // num_heads
        h = w % num_heads
        row0 = (tl.cast(t, tl.int64) * num_heads + h) * num_segments
        o, m_safe, l_tot = merge_segments(
            ws_m_ptr, ws_l_ptr, ws_acc_ptr, row0, offs_s, s_mask, offs_d, s_mask[:, None] & d_mask[None, :],
            0.0, LORA_PAD, False,
        )  # fmt: skip
        tl.store(
            out_ptr + tl.cast(t, tl.int64) * o_stride_t + h * o_stride_h + offs_d,
            o.to(out_ptr.dtype.element_ty),
            mask=d_mask,
        )
        if WRITE_LSE:
            tl.store(lse_ptr + tl.cast(t, tl.int64) * num_heads + h, log_sum_exp(m_safe, l_tot))


@triton.jit
def _mla_prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    cu_q_ptr,
    cu_k_ptr,
    num_seqs,
    num_q_tiles,
    num_heads,
    num_tokens,
    num_keys,
    q_stride_t,
    q_stride_h,
    k_stride_t,
    k_stride_h,
    v_stride_t,
    v_stride_h,
    o_stride_t,
    o_stride_h,
    lse_stride_h,
    scale,
    DA: tl.constexpr,
    DB: tl.constexpr,
    DB_PAD: tl.constexpr,
    DV: tl.constexpr,
    DV_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    # The qk head is cut into a power-of-two part [0, DA) and the rest [DA, DA + DB) (192 =
    # 128 + 64: no padding to 256); both parts feed one score tile.
    offs_m = tl.arange(0, BLOCK_Q)
    offs_a = tl.arange(0, DA)
    offs_b = tl.arange(0, DB_PAD)
    b_mask = offs_b < DB
    offs_v = tl.arange(0, DV_PAD)
    v_mask = offs_v < DV
    offs_n = tl.arange(0, TILE_N)
    offs_n_f = offs_n.to(tl.float32)
    total = num_q_tiles * num_heads
    for w in range(tl.program_id(0), total, tl.num_programs(0)):
        h = w % num_heads
        qt = w // num_heads
        seq, q_start, q_len, tok0 = query_tile_sequence(cu_q_ptr, num_seqs, qt, BLOCK_Q)
        # Rows and keys that exist whatever the (unchecked) cu_seqlens say: memory follows these.
        q_rows = tl.minimum(q_len, num_tokens - q_start)
        k_start = tl.load(cu_k_ptr + seq).to(tl.int32)
        k_len = tl.load(cu_k_ptr + seq + 1).to(tl.int32) - k_start
        k_rows = tl.minimum(k_len, num_keys - k_start)
        if (tok0 >= 0) & (tok0 < q_rows) & (q_start >= 0) & (k_start >= 0):
            tok = tok0 + offs_m
            row_ok = tok < q_rows
            row0 = (q_start + tok0).to(tl.int64)
            q_base = q_ptr + row0 * q_stride_t + offs_m[:, None] * q_stride_t + h * q_stride_h
            q_a = tl.load(q_base + offs_a[None, :], mask=row_ok[:, None], other=0.0)
            q_b = tl.load(q_base + DA + offs_b[None, :], mask=row_ok[:, None] & b_mask[None, :], other=0.0)
            # Causal (bottom-right aligned): row i sees keys k <= (k_len - q_len) + i.
            lim_f = (k_len - q_len + 1 + tok).to(tl.float32)
            if CAUSAL:
                k_hi = tl.minimum(k_len - q_len + tl.minimum(tok0 + BLOCK_Q, q_rows), k_rows)
            else:
                k_hi = k_rows
            m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_Q], tl.float32)
            acc = tl.zeros([BLOCK_Q, DV_PAD], tl.float32)
            k_row0 = tl.cast(k_start, tl.int64)
            for j in range(0, (k_hi + TILE_N - 1) // TILE_N):
                k0 = j * TILE_N
                n_ok = (k0 + offs_n) < k_hi
                k_base = k_ptr + (k_row0 + k0) * k_stride_t + offs_n[:, None] * k_stride_t + h * k_stride_h
                k_a = tl.load(k_base + offs_a[None, :], mask=n_ok[:, None], other=0.0)
                k_b = tl.load(k_base + DA + offs_b[None, :], mask=n_ok[:, None] & b_mask[None, :], other=0.0)
                s = (tl.dot(q_a, tl.trans(k_a)) + tl.dot(q_b, tl.trans(k_b))) * scale
                visible = row_ok[:, None] & n_ok[None, :]
                if CAUSAL:
                    visible = visible & ((offs_n_f + k0)[None, :] < lim_f[:, None])
                s = tl.where(visible, s, float("-inf"))
                p, alpha, m_i, l_i = softmax_step(s, m_i, l_i)
                v_base = v_ptr + (k_row0 + k0) * v_stride_t + offs_n[:, None] * v_stride_t + h * v_stride_h
                v = tl.load(v_base + offs_v[None, :], mask=n_ok[:, None] & v_mask[None, :], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            o = acc / safe_denominator(l_i)[:, None]
            tl.store(
                out_ptr + row0 * o_stride_t + offs_m[:, None] * o_stride_t + h * o_stride_h + offs_v[None, :],
                o.to(out_ptr.dtype.element_ty),
                mask=row_ok[:, None] & v_mask[None, :],
            )
            if WRITE_LSE:
                tl.store(lse_ptr + h * lse_stride_h + row0 + offs_m, log_sum_exp(m_i, l_i), mask=row_ok)
