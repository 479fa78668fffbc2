"""The @triton.jit bodies of the rope family (design notes: the package docstring)."""

import triton
import triton.language as tl

from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)


@triton.jit
def _rotate_token_heads(
    base_ptr,
    head_stride,
    num_heads,
    cos,
    sin,
    d,
    dmask,
    HALF_ROT: tl.constexpr,
    BLOCK_H: tl.constexpr,
    IS_NEOX: tl.constexpr,
):
    """Rotate every head of one token in place; cos/sin are [HALF_PAD] rows in the data dtype."""
    h_offs = tl.arange(0, BLOCK_H)
    c = cos[None, :]
    s = sin[None, :]
    if IS_NEOX:
        for h0 in range(0, num_heads, BLOCK_H):
            heads = h0 + h_offs
            mask = (heads < num_heads)[:, None] & dmask[None, :]
            p1 = base_ptr + heads[:, None] * head_stride + d[None, :]
            p2 = p1 + HALF_ROT
            x1 = tl.load(p1, mask=mask, other=0.0)
            x2 = tl.load(p2, mask=mask, other=0.0)
            # Same operation order and dtype as vLLM's reference (one rounding per op).
            tl.store(p1, x1 * c - x2 * s, mask=mask)
            tl.store(p2, x2 * c + x1 * s, mask=mask)
    else:
        # GPT-J pairs are adjacent: one contiguous [BLOCK_H, HALF_PAD, 2] tile, split into the
        # even and odd members in registers (stride-2 loads crash the Ascend adapter).
        pair = tl.arange(0, 2)
        for h0 in range(0, num_heads, BLOCK_H):
            heads = h0 + h_offs
            mask = (heads < num_heads)[:, None, None] & dmask[None, :, None] & (pair < 2)[None, None, :]
            p = base_ptr + heads[:, None, None] * head_stride + 2 * d[None, :, None] + pair[None, None, :]
            x1, x2 = tl.split(tl.load(p, mask=mask, other=0.0))
            tl.store(p, tl.join(x1 * c - x2 * s, x2 * c + x1 * s), mask=mask)


@triton.jit
def _rope_kernel(
    pos_ptr,
    off_ptr,
    q_ptr,
    k_ptr,
    cache_ptr,
    num_tokens,
    max_pos,
    q_token_stride,
    q_head_stride,
    num_q_heads,
    k_token_stride,
    k_head_stride,
    num_k_heads,
    cache_stride,
    HALF_ROT: tl.constexpr,
    HALF_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_KEY: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
):
    d = tl.arange(0, HALF_PAD)
    dmask = d < HALF_ROT
    for t in range(tl.program_id(0), num_tokens, tl.num_programs(0)):
        # One scalar position per token: the cache row is then a contiguous load.
        pos = tl.load(pos_ptr + t).to(tl.int64)
        if HAS_OFFSETS:
            pos += tl.load(off_ptr + t).to(tl.int64)
        valid = (pos >= 0) & (pos < max_pos)
        row = cache_ptr + tl.where(valid, pos, 0) * cache_stride
        rmask = dmask & valid
        cos = tl.load(row + d, mask=rmask, other=1.0).to(q_ptr.dtype.element_ty)
        sin = tl.load(row + HALF_ROT + d, mask=rmask, other=0.0).to(q_ptr.dtype.element_ty)
        _rotate_token_heads(
            q_ptr + tl.cast(t, tl.int64) * q_token_stride, q_head_stride, num_q_heads, cos, sin, d, rmask,
            HALF_ROT, BLOCK_H, IS_NEOX,
        )  # fmt: skip
        if HAS_KEY:
            _rotate_token_heads(
                k_ptr + tl.cast(t, tl.int64) * k_token_stride, k_head_stride, num_k_heads, cos, sin, d, rmask,
                HALF_ROT, BLOCK_H, IS_NEOX,
            )  # fmt: skip


@triton.jit
def _mrope_kernel(
    pos_ptr,
    pos_row_stride,
    q_ptr,
    k_ptr,
    cache_ptr,
    num_tokens,
    max_pos,
    q_token_stride,
    q_head_stride,
    num_q_heads,
    k_token_stride,
    k_head_stride,
    num_k_heads,
    cache_stride,
    HALF_ROT: tl.constexpr,
    HALF_PAD: tl.constexpr,
    SECTION_T: tl.constexpr,
    SECTION_H: tl.constexpr,
    SECTION_W: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    BLOCK_H: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_KEY: tl.constexpr,
):
    d = tl.arange(0, HALF_PAD)
    dmask = d < HALF_ROT
    # Which position row (T, H or W) each half-dim channel takes its cos/sin from.
    if INTERLEAVED:
        use_h = (d % 3 == 1) & (d < 3 * SECTION_H)
        use_w = (d % 3 == 2) & (d < 3 * SECTION_W)
    else:
        use_h = (d >= SECTION_T) & (d < SECTION_T + SECTION_H)
        use_w = d >= SECTION_T + SECTION_H
    use_t = (use_h | use_w) == 0  # (the interpreter has no bool invert)
    for t in range(tl.program_id(0), num_tokens, tl.num_programs(0)):
        pos_t = tl.load(pos_ptr + t).to(tl.int64)
        pos_h = tl.load(pos_ptr + pos_row_stride + t).to(tl.int64)
        pos_w = tl.load(pos_ptr + 2 * pos_row_stride + t).to(tl.int64)
        valid = (pos_t >= 0) & (pos_t < max_pos) & (pos_h >= 0) & (pos_h < max_pos)
        valid = valid & (pos_w >= 0) & (pos_w < max_pos)
        rmask = dmask & valid
        row_t = cache_ptr + tl.where(valid, pos_t, 0) * cache_stride
        row_h = cache_ptr + tl.where(valid, pos_h, 0) * cache_stride
        row_w = cache_ptr + tl.where(valid, pos_w, 0) * cache_stride
        # Three contiguous masked row loads; exactly one of them is live per channel.
        cos = tl.load(row_t + d, mask=rmask & use_t, other=0.0)
        cos += tl.load(row_h + d, mask=rmask & use_h, other=0.0)
        cos += tl.load(row_w + d, mask=rmask & use_w, other=0.0)
        sin = tl.load(row_t + HALF_ROT + d, mask=rmask & use_t, other=0.0)
        sin += tl.load(row_h + HALF_ROT + d, mask=rmask & use_h, other=0.0)
        sin += tl.load(row_w + HALF_ROT + d, mask=rmask & use_w, other=0.0)
        cos = cos.to(q_ptr.dtype.element_ty)
        sin = sin.to(q_ptr.dtype.element_ty)
        _rotate_token_heads(
            q_ptr + tl.cast(t, tl.int64) * q_token_stride, q_head_stride, num_q_heads, cos, sin, d, rmask,
            HALF_ROT, BLOCK_H, IS_NEOX,
        )  # fmt: skip
        if HAS_KEY:
            _rotate_token_heads(
                k_ptr + tl.cast(t, tl.int64) * k_token_stride, k_head_stride, num_k_heads, cos, sin, d, rmask,
                HALF_ROT, BLOCK_H, IS_NEOX,
            )  # fmt: skip
