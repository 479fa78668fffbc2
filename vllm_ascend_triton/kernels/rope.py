"""Rotary position embedding (RoPE) for Triton-Ascend: vLLM's rotary op and MRoPE.

Semantics
---------
`rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox, offsets=None)`
rotates `query` and `key` in place exactly as vLLM's `RotaryEmbedding.forward_static` computes
them (and returns them for convenience):

- `cos_sin_cache [max_pos, rot_dim]` holds the cos half then the sin half of each position's
  row; `rot_dim <= head_size`; dims `rot_dim..head_size` of every head pass through unchanged.
- NeoX style pairs dim `i` with `i + rot_dim/2`; GPT-J style pairs dims `2i` and `2i + 1`.
- cos/sin are cast to the query's dtype and the rotation is computed in that dtype, one rounding
  per operation, as vLLM's reference does (so fp16/fp32 results match it bit for bit on the
  interpreter). bf16 on the interpreter goes through the runtime's bf16 shim (fp32 arithmetic on
  bf16-rounded cos/sin), which differs from vLLM's bf16 arithmetic by about one bf16 ulp.
- `offsets` (DeepSeek YaRN style): the cache row of token `t` is `positions[t] + offsets[t]`.
- positions `[T]` or `[B, S]` (flattened); query/key `[T, H*D]`, `[T, H, D]`, or `[B, S, H*D]`
  with `[B, S]` positions; any token and head stride (slices of a fused qkv tensor), last dim
  contiguous. `key=None` rotates only the query.
- A token whose cache row lies outside `[0, max_pos)` is never read out of bounds: the kernel
  masks it and leaves that token's query and key unchanged. With input checks on
  (`checks_enabled()`: default on the interpreter, opt-in on an NPU since it costs a device
  sync) such positions raise `ValueError` before the launch.

`mrope_rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox,
mrope_section, mrope_interleaved=False)` matches vLLM's `MRotaryEmbedding` (Qwen2-VL /
Qwen2.5-VL, and the interleaved Qwen3-VL layout): positions `[3, T]` are the T/H/W position
rows; half-dim channel `c` takes its cos/sin from the row chosen by `mrope_section` (contiguous
sections T, H, W; or, interleaved, H where `c % 3 == 1 and c < 3*h`, W where
`c % 3 == 2 and c < 3*w`, T elsewhere). Positions `[T]` mean text only: plain rope. A token
with any of its three positions outside the cache is left unchanged (or raises, with checks on).
Like vLLM's MRotaryEmbedding it takes no offsets. Not covered: vLLM's separate
`MRotaryEmbeddingInterleaved` class (a different channel order built from an id list), and the
`rope_dim_offset` / `inverse` extras of `_custom_ops.rotary_embedding`.

Ascend design
-------------
- Vector-only kernels (mix_mode "aiv"); grid = one program per vector core
  (`persistent_grid`), each looping over tokens `t = pid, pid + grid, ...` so no extra
  scheduling rounds happen whatever the batch size.
- Per token: one scalar load of the position (three for MRoPE), then the cos and sin halves of
  that cache row as contiguous masked loads at a scalar base address -- no per-element gather,
  so the adapter emits no discrete (scalarized) accesses. The row is cast once and reused for
  every query and key head of the token; one launch rotates both query and key. Nothing is
  recomputed from the frequency table at run time.
- Heads are processed in tiles of `BLOCK_H` heads x `rot_dim/2` (padded to a power of two)
  pairs: two input tiles (the two members of each rotary pair), two output tiles, plus the cos
  and sin rows. The default `BLOCK_H` keeps a tile at <= `_TILE_ELEMS` elements, i.e. a few
  tens of KB of live buffers even for fp32 -- under half the 192 KB Unified Buffer, leaving
  room for double buffering. The dim axis is not tiled: a whole half row (<= 256 pairs even
  for head_size 512) is small next to the UB.
- Tokens are not blocked: a block of tokens would need a vector of positions, and a cache
  row address per element is exactly the gather the adapter scalarizes. Per token, the head
  tile is the unit of work (all of a token's query and key heads in one or a few tiles).
- Index math is int32 inside a tile; the per-token base offset is a scalar int64 product, so
  large token counts times wide fused-qkv strides cannot overflow.
- GPT-J pairs are adjacent dims: each head tile is loaded as one contiguous
  `[BLOCK_H, HALF_PAD, 2]` block and split into even/odd members in registers (`tl.split`,
  `tl.join` on the way back). Two stride-2 loads would express the same thing but crash
  triton-ascend 3.2's adapter (`triton-adapter-opt` aborts; found while writing this kernel).
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
    "rotary_embedding",
    "mrope_rotary_embedding",
    "rope_reference",
    "mrope_reference",
    "lowering_requests",
    "self_check",
]

# Elements per (BLOCK_H x half-rot) tile in the default config: 4 such tiles (x1, x2, o1, o2)
# in fp32 are 64 KB, double-buffered 128 KB < 192 KB UB; fp16 half that.
_TILE_ELEMS = 4096


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Validation and layout
# ----------------------------------------------------------------------------------------------


def _heads_view(
    name: str, x: torch.Tensor, num_tokens: int, token_shape: tuple[int, ...], head_size: int
) -> tuple[int, int, int]:
    """(token_stride, head_stride, num_heads) of a query/key tensor, in elements."""
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must have 2 or 3 dims ([T, H*D] or [T, H, D]), got shape {tuple(x.shape)}")
    if x.numel() > 0:
        check_last_dim_contiguous(name, x)
    if x.dim() == 3 and len(token_shape) == 2 and tuple(x.shape[:2]) == token_shape:
        # [B, S, H*D] with [B, S] positions: token b*S + s lives at b*stride(0) + s*stride(1),
        # which must be one token stride.
        batch, seq = token_shape
        token_stride = x.stride(0) if seq == 1 else x.stride(1)
        if batch > 1 and seq > 1 and x.stride(0) != seq * x.stride(1):
            raise ValueError(
                f"{name} of shape {tuple(x.shape)} cannot merge its [B, S] token dims (strides {x.stride()})"
            )
        if x.shape[2] % head_size:
            raise ValueError(f"{name}'s last dim {x.shape[2]} is not a multiple of head_size {head_size}")
        return token_stride, head_size, x.shape[2] // head_size
    if x.shape[0] != num_tokens:
        raise ValueError(f"{name} has {x.shape[0]} tokens (dim 0), positions have {num_tokens}")
    if x.dim() == 2:
        if x.shape[1] % head_size:
            raise ValueError(f"{name}'s last dim {x.shape[1]} is not a multiple of head_size {head_size}")
        return x.stride(0), head_size, x.shape[1] // head_size
    if x.shape[2] != head_size:
        raise ValueError(f"{name} of shape {tuple(x.shape)} must have head_size {head_size} as its last dim")
    return x.stride(0), x.stride(1), x.shape[1]


def _qk_layout(
    query: torch.Tensor,
    key: torch.Tensor | None,
    num_tokens: int,
    token_shape: tuple[int, ...],
    head_size: int,
) -> tuple[int, int, int, int, int, int]:
    """(q_token_stride, q_head_stride, num_q_heads, k_token_stride, k_head_stride, num_k_heads)."""
    q = _heads_view("query", query, num_tokens, token_shape, head_size)
    k = _heads_view("key", key, num_tokens, token_shape, head_size) if key is not None else (0, 0, 0)
    return (*q, *k)


def _validate_common(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    positions_ndim: Sequence[int],
) -> int:
    """Checks shared by both entry points; returns rot_dim."""
    check_tensor("positions", positions, dtypes=INDEX_DTYPES, ndim=tuple(positions_ndim))
    check_tensor("query", query, dtypes=FLOAT_DTYPES)
    if key is not None:
        check_tensor("key", key, dtypes=FLOAT_DTYPES)
        if key.dtype != query.dtype:
            raise TypeError(f"key must have the query's dtype {query.dtype}, got {key.dtype}")
    check_tensor("cos_sin_cache", cos_sin_cache, dtypes=FLOAT_DTYPES, ndim=2)
    check_same_device(positions=positions, query=query, key=key, cos_sin_cache=cos_sin_cache)
    check_positive_int("head_size", head_size)
    if not isinstance(is_neox, bool):
        raise TypeError(f"is_neox must be a bool, got {type(is_neox).__name__}")
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim < 2 or rot_dim % 2:
        raise ValueError(f"cos_sin_cache's rot_dim (dim 1) must be even and >= 2, got {rot_dim}")
    if rot_dim > head_size:
        raise ValueError(f"cos_sin_cache's rot_dim {rot_dim} exceeds head_size {head_size}")
    if cos_sin_cache.shape[0] > 0 and cos_sin_cache.stride(1) != 1:
        raise ValueError(f"cos_sin_cache must be contiguous in dim 1, got strides {cos_sin_cache.stride()}")
    return rot_dim


def _check_position_range(name: str, index: torch.Tensor, max_pos: int) -> None:
    """Data-dependent check (a device sync on an NPU): every cache row index is in range."""
    if index.numel() == 0 or not checks_enabled():
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= max_pos:
        raise ValueError(
            f"{name} must index cos_sin_cache rows in [0, {max_pos}), got values in [{lo}, {hi}]"
        )


def _default_config(half_rot: int, num_heads: int) -> dict[str, int]:
    half_pad = triton.next_power_of_2(half_rot)
    block_h = max(1, min(triton.next_power_of_2(max(num_heads, 1)), _TILE_ELEMS // half_pad))
    return {"BLOCK_H": block_h}


def _launch_config(
    kernel: str, head_size: int, rot_dim: int, num_heads: int, num_tokens: int
) -> tuple[dict, tuple[int]]:
    dev = current_device()
    key = {"head_size": head_size, "rot_dim": rot_dim, "num_heads": num_heads, "num_tokens": num_tokens}
    config = lookup_config(dev.sku.name, kernel, key, _default_config(rot_dim // 2, num_heads))
    logger.debug("%s on %s: config %s for %s", kernel, dev.sku.name, config, key)
    block_h = config.get("BLOCK_H")
    if not isinstance(block_h, int) or block_h < 1 or block_h & (block_h - 1):
        raise ValueError(f"{kernel} config for {dev.sku.name} needs a power-of-two BLOCK_H, got {block_h!r}")
    return config, persistent_grid(num_tokens, device=dev)


def _kernel_cache(cos_sin_cache: torch.Tensor, query: torch.Tensor, shim_active: bool) -> torch.Tensor:
    # vLLM casts the cache to the query dtype before rotating. The kernel casts each row itself;
    # only when bf16 runs as fp32 on the interpreter is the bf16 rounding applied here.
    if shim_active and query.dtype == torch.bfloat16 and cos_sin_cache.dtype != torch.bfloat16:
        return cos_sin_cache.to(torch.bfloat16)
    return cos_sin_cache


# ----------------------------------------------------------------------------------------------
# Host API
# ----------------------------------------------------------------------------------------------


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """vLLM's rotary embedding, in place on `query` and `key` (see the module docstring)."""
    rot_dim = _validate_common(positions, query, key, head_size, cos_sin_cache, is_neox, (1, 2))
    token_shape = tuple(positions.shape)
    num_tokens = positions.numel()
    layout = _qk_layout(query, key, num_tokens, token_shape, head_size)
    num_q_heads, num_k_heads = layout[2], layout[5]
    if offsets is not None:
        check_tensor("offsets", offsets, dtypes=INDEX_DTYPES)
        check_same_device(positions=positions, offsets=offsets)
        if offsets.shape != positions.shape:
            raise ValueError(
                f"offsets must have the shape of positions {token_shape}, got {tuple(offsets.shape)}"
            )
    max_pos = cos_sin_cache.shape[0]
    pos = positions.reshape(-1)
    off = offsets.reshape(-1) if offsets is not None else None
    _check_position_range("positions + offsets" if off is not None else "positions",
                          pos.long() + off if off is not None else pos, max_pos)  # fmt: skip
    if num_tokens == 0 or num_q_heads + num_k_heads == 0:
        return query, key

    config, grid = _launch_config("rope", head_size, rot_dim, max(num_q_heads, num_k_heads), num_tokens)
    with bf16_shim() as shim:
        q = shim.output(query)
        k = shim.output(key)
        cache = shim.input(_kernel_cache(cos_sin_cache, query, shim.active))
        # The shim's fp32 copies of bf16 views may be laid out differently: strides from them.
        layout = _qk_layout(q, k, num_tokens, token_shape, head_size)
        _rope_kernel[grid](
            pos, off if off is not None else pos, q, k if k is not None else q, cache,
            num_tokens, max_pos,
            *layout,
            cache.stride(0),
            HALF_ROT=rot_dim // 2,
            HALF_PAD=triton.next_power_of_2(rot_dim // 2),
            BLOCK_H=config["BLOCK_H"],
            IS_NEOX=is_neox,
            HAS_KEY=k is not None,
            HAS_OFFSETS=off is not None,
        )  # fmt: skip
    return query, key


def _check_mrope_section(mrope_section: object, rot_dim: int) -> tuple[int, int, int]:
    if not isinstance(mrope_section, list | tuple) or len(mrope_section) != 3:
        raise TypeError(f"mrope_section must be a list of 3 ints [t, h, w], got {mrope_section!r}")
    for v in mrope_section:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"mrope_section must hold non-negative ints, got {mrope_section!r}")
    if sum(mrope_section) != rot_dim // 2:
        raise ValueError(f"mrope_section {list(mrope_section)} must sum to rot_dim // 2 = {rot_dim // 2}")
    return tuple(mrope_section)  # type: ignore[return-value]


def mrope_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    mrope_section: Sequence[int],
    mrope_interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """vLLM's `MRotaryEmbedding` rotation, in place on `query` and `key`.

    positions `[3, T]` (T/H/W rows) or `[T]` (text only: plain rope); query/key `[T, H*D]` or
    `[T, H, D]`; `mrope_section` = [t, h, w] channel counts summing to rot_dim // 2.
    """
    rot_dim = _validate_common(positions, query, key, head_size, cos_sin_cache, is_neox, (1, 2))
    sections = _check_mrope_section(mrope_section, rot_dim)
    if not isinstance(mrope_interleaved, bool):
        raise TypeError(f"mrope_interleaved must be a bool, got {type(mrope_interleaved).__name__}")
    if positions.dim() == 1:
        return rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)
    if positions.shape[0] != 3:
        raise ValueError(f"positions must be [3, T] (T/H/W rows) or [T], got shape {tuple(positions.shape)}")
    num_tokens = positions.shape[1]
    layout = _qk_layout(query, key, num_tokens, (num_tokens,), head_size)
    num_q_heads, num_k_heads = layout[2], layout[5]
    max_pos = cos_sin_cache.shape[0]
    _check_position_range("positions", positions, max_pos)
    if num_tokens == 0 or num_q_heads + num_k_heads == 0:
        return query, key
    pos = positions if positions.stride(1) == 1 else positions.contiguous()

    config, grid = _launch_config("mrope", head_size, rot_dim, max(num_q_heads, num_k_heads), num_tokens)
    with bf16_shim() as shim:
        q = shim.output(query)
        k = shim.output(key)
        cache = shim.input(_kernel_cache(cos_sin_cache, query, shim.active))
        # The shim's fp32 copies of bf16 views may be laid out differently: strides from them.
        layout = _qk_layout(q, k, num_tokens, (num_tokens,), head_size)
        _mrope_kernel[grid](
            pos, pos.stride(0), q, k if k is not None else q, cache,
            num_tokens, max_pos,
            *layout,
            cache.stride(0),
            HALF_ROT=rot_dim // 2,
            HALF_PAD=triton.next_power_of_2(rot_dim // 2),
            SECTION_T=sections[0],
            SECTION_H=sections[1],
            SECTION_W=sections[2],
            INTERLEAVED=mrope_interleaved,
            BLOCK_H=config["BLOCK_H"],
            IS_NEOX=is_neox,
            HAS_KEY=k is not None,
        )  # fmt: skip
    return query, key


# ----------------------------------------------------------------------------------------------
# Torch references (out of place; vLLM's own references are what the tests compare against)
# ----------------------------------------------------------------------------------------------


def _rotate_ref(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_size: int, is_neox: bool
) -> torch.Tensor:
    """x [T, ...]; cos/sin [T, rot_dim/2] already in x's dtype."""
    shape = x.shape
    x = x.reshape(shape[0], -1, head_size)
    rot = 2 * cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    c, s = cos[:, None, :], sin[:, None, :]
    if is_neox:
        x1, x2 = xr.chunk(2, dim=-1)
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    else:
        x1, x2 = xr[..., ::2], xr[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((out, xp), dim=-1).reshape(shape)


def rope_reference(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain-torch rope (vLLM's forward_static semantics), out of place."""
    idx = positions.reshape(-1).long()
    if offsets is not None:
        idx = idx + offsets.reshape(-1).long()
    cos, sin = cos_sin_cache[idx].to(query.dtype).chunk(2, dim=-1)
    q = _rotate_ref(query.reshape(idx.numel(), -1), cos, sin, head_size, is_neox).reshape(query.shape)
    k = (
        None
        if key is None
        else _rotate_ref(key.reshape(idx.numel(), -1), cos, sin, head_size, is_neox).reshape(key.shape)
    )
    return q, k


def _mrope_channel_rows(half_rot: int, sections: Sequence[int], interleaved: bool) -> torch.Tensor:
    """For each half-dim channel, which position row (0=T, 1=H, 2=W) it uses."""
    c = torch.arange(half_rot)
    if interleaved:
        rows = torch.zeros(half_rot, dtype=torch.long)
        rows[(c % 3 == 1) & (c < 3 * sections[1])] = 1
        rows[(c % 3 == 2) & (c < 3 * sections[2])] = 2
        return rows
    return torch.repeat_interleave(torch.arange(3), torch.tensor(list(sections)))


def mrope_reference(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    mrope_section: Sequence[int],
    mrope_interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain-torch MRoPE (vLLM MRotaryEmbedding.forward_native semantics), out of place."""
    if positions.dim() == 1:
        return rope_reference(positions, query, key, head_size, cos_sin_cache, is_neox)
    half = cos_sin_cache.shape[1] // 2
    rows = _mrope_channel_rows(half, mrope_section, mrope_interleaved)
    cs = cos_sin_cache[positions.long()]  # [3, T, rot]
    chan = torch.arange(half)
    cos = cs[rows, :, chan].T.to(query.dtype)  # [T, half]
    sin = cs[rows, :, half + chan].T.to(query.dtype)
    n = positions.shape[1]
    q = _rotate_ref(query.reshape(n, -1), cos, sin, head_size, is_neox).reshape(query.shape)
    k = (
        None
        if key is None
        else _rotate_ref(key.reshape(n, -1), cos, sin, head_size, is_neox).reshape(key.shape)
    )
    return q, k


# ----------------------------------------------------------------------------------------------
# Lowering variants and self check
# ----------------------------------------------------------------------------------------------


# (label, dtype, head_size, rot_dim, num_heads, is_neox): shapes of real models.
_LOWERING_SHAPES = (
    ("llama_h128_neox", torch.float16, 128, 128, 32, True),
    ("gptj_h256_partial64", torch.bfloat16, 256, 64, 16, False),
    ("qwen_h80_fp32", torch.float32, 80, 80, 40, True),
    ("gptj_h128_fp32_64heads", torch.float32, 128, 128, 64, False),  # the largest default tile
)


def _common_signature(dtype: torch.dtype, cache_dtype: torch.dtype) -> dict[str, str]:
    ptr = "*" + triton_type_name(dtype)
    return {
        "q_ptr": ptr, "k_ptr": ptr, "cache_ptr": "*" + triton_type_name(cache_dtype),
        "num_tokens": "i32", "max_pos": "i32",
        "q_token_stride": "i32", "q_head_stride": "i32", "num_q_heads": "i32",
        "k_token_stride": "i32", "k_head_stride": "i32", "num_k_heads": "i32",
        "cache_stride": "i32",
    }  # fmt: skip


def lowering_requests(sku: str) -> list[LoweringRequest]:
    """Default-config variants of both kernels for `sku` (fp16/bf16/fp32, NeoX/GPT-J, offsets,
    partial rotary, MRoPE contiguous and interleaved)."""
    reqs = []
    for label, dtype, _head_size, rot_dim, heads, neox in _LOWERING_SHAPES:
        half = rot_dim // 2
        sig = {"pos_ptr": "*i64", "off_ptr": "*i64", **_common_signature(dtype, dtype)}
        consts = {
            "HALF_ROT": half, "HALF_PAD": triton.next_power_of_2(half),
            "BLOCK_H": _default_config(half, heads)["BLOCK_H"],
            "IS_NEOX": neox, "HAS_KEY": True, "HAS_OFFSETS": label.startswith("gptj_h256"),
        }  # fmt: skip
        reqs.append(LoweringRequest(kernel_ref(_rope_kernel), sig, consts, sku, f"rope_{label}"))
    for interleaved in (False, True):
        sig = {"pos_ptr": "*i64", "pos_row_stride": "i32", **_common_signature(torch.bfloat16, torch.float32)}
        consts = {
            "HALF_ROT": 64, "HALF_PAD": 64, "SECTION_T": 16, "SECTION_H": 24, "SECTION_W": 24,
            "INTERLEAVED": interleaved, "BLOCK_H": _default_config(64, 28)["BLOCK_H"],
            "IS_NEOX": True, "HAS_KEY": True,
        }  # fmt: skip
        name = "mrope_interleaved_h128" if interleaved else "mrope_h128"
        reqs.append(LoweringRequest(kernel_ref(_mrope_kernel), sig, consts, sku, name))
    return reqs


def _random_case(
    num_tokens: int, heads: int, kv_heads: int, head_size: int, rot_dim: int, max_pos: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    query = torch.randn(num_tokens, heads * head_size, generator=g).to(dtype)
    key = torch.randn(num_tokens, kv_heads * head_size, generator=g).to(dtype)
    cache = torch.randn(max_pos, rot_dim, generator=g).to(dtype)
    return query, key, cache


def self_check() -> list[CheckResult]:
    """Small cases on this backend against the torch reference (fast on the interpreter)."""
    results = []
    for name, dtype, head_size, rot_dim, neox, atol in (
        ("neox_h128_fp32", torch.float32, 128, 128, True, 1e-5),
        ("gptj_h80_partial_fp16", torch.float16, 80, 32, False, 1e-3),
    ):
        query, key, cache = _random_case(5, 3, 1, head_size, rot_dim, 64, dtype)
        positions = torch.randint(0, 64, (5,), generator=torch.Generator().manual_seed(7))
        eq, ek = rope_reference(positions, query, key, head_size, cache, neox)
        rotary_embedding(positions, query, key, head_size, cache, neox)
        results.append(compare("rotary_embedding", f"{name} query", query, eq, atol))
        results.append(compare("rotary_embedding", f"{name} key", key, ek, atol))
    for interleaved in (False, True):
        query, key, cache = _random_case(4, 2, 1, 64, 64, 32, torch.float32)
        positions = torch.randint(0, 32, (3, 4), generator=torch.Generator().manual_seed(8))
        eq, ek = mrope_reference(positions, query, key, 64, cache, True, [8, 12, 12], interleaved)
        mrope_rotary_embedding(positions, query, key, 64, cache, True, [8, 12, 12], interleaved)
        results.append(compare("mrope_rotary_embedding", f"interleaved={interleaved} query", query, eq, 1e-5))
    return results
