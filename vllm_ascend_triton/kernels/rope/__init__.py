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
- Non-finite data (NaN/inf in query, key or the cache) follows IEEE arithmetic within the token
  and pair it sits in (a NaN cos/sin row poisons that token's rotated dims only; pass-through dims
  and other tokens are untouched). Nothing outside `query`, `key` and the cache rows named by valid
  positions is ever read or written, whatever the data, with checks on or off.
- Limits (`kernels.limits`): `rot_dim <= ROPE_MAX_ROTARY_DIM` (512); larger is a `ValueError`.

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
  and sin rows. The default `BLOCK_H` is sized by `runtime.ub.tile_elements` from the SKU's
  Unified Buffer and the data dtype (four live tiles, double-buffered): 4096 fp32 or 8192 fp16
  elements per tile on a 192 KB UB. Tuned entries are keyed by shape, not dtype, so a tuned
  `BLOCK_H` above what the launch's dtype fits is cut to it. The dim axis is not tiled: a whole
  half row (<= 256 pairs even for head_size 512) is small next to the UB.
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

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch
import triton

from vllm_ascend_triton.kernels.limits import ROPE_MAX_ROTARY_DIM
from vllm_ascend_triton.kernels.rope._kernels import _mrope_kernel, _rope_kernel
from vllm_ascend_triton.kernels.rope.reference import mrope_reference, rope_reference
from vllm_ascend_triton.runtime.checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from vllm_ascend_triton.runtime.configs import ShapeCache, lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import LaunchSpec, bf16_shim, checks_enabled, persistent_grid
from vllm_ascend_triton.runtime.ub import dtype_bytes, tile_elements

logger = logging.getLogger(__name__)

__all__ = ["rotary_embedding", "mrope_rotary_embedding", "rope_reference", "mrope_reference"]

# Live tiles per program in the rotation loop: x1, x2 and the two outputs (cos/sin rows are small).
_LIVE_TILES = 4


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
    if rot_dim > ROPE_MAX_ROTARY_DIM:
        raise ValueError(f"cos_sin_cache's rot_dim must be <= {ROPE_MAX_ROTARY_DIM}, got {rot_dim}")
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


def _max_block_h(half_rot: int, dtype: torch.dtype) -> int:
    """Most heads per tile whose four live tiles of this dtype fit the UB budget (a power of two)."""
    per_tile = tile_elements(_LIVE_TILES, dtype_bytes(dtype)) // triton.next_power_of_2(half_rot)
    return 1 << max(0, per_tile.bit_length() - 1)


def _default_config(half_rot: int, num_heads: int, dtype: torch.dtype) -> dict[str, int]:
    return {"BLOCK_H": min(triton.next_power_of_2(max(num_heads, 1)), _max_block_h(half_rot, dtype))}


@functools.cache
def _warn_block_h_cut(kernel: str, sku: str, block_h: int, cap: int, dtype: str) -> None:
    logger.warning(
        "%s on %s: tuned BLOCK_H %d does not fit the Unified Buffer for %s data; using %d "
        "(tuned configs are keyed by shape, not dtype)",
        kernel, sku, block_h, dtype, cap,
    )  # fmt: skip


_PLANS = ShapeCache("rope")


def _launch_config(
    kernel: str, head_size: int, rot_dim: int, num_heads: int, num_tokens: int, dtype: torch.dtype
) -> tuple[dict, tuple[int]]:
    plan_key = (kernel, head_size, rot_dim, num_heads, num_tokens, dtype)
    plan = _PLANS.get(plan_key)
    if plan is not None:
        return plan
    return _PLANS.put(plan_key, _plan_launch(kernel, head_size, rot_dim, num_heads, num_tokens, dtype))


def _plan_launch(
    kernel: str, head_size: int, rot_dim: int, num_heads: int, num_tokens: int, dtype: torch.dtype
) -> tuple[dict, tuple[int]]:
    dev = current_device()
    key = {"head_size": head_size, "rot_dim": rot_dim, "num_heads": num_heads, "num_tokens": num_tokens}
    config = lookup_config(dev.sku.name, kernel, key, _default_config(rot_dim // 2, num_heads, dtype))
    logger.debug("%s on %s: config %s for %s", kernel, dev.sku.name, config, key)
    block_h = config.get("BLOCK_H")
    if not isinstance(block_h, int) or block_h < 1 or block_h & (block_h - 1):
        raise ValueError(f"{kernel} config for {dev.sku.name} needs a power-of-two BLOCK_H, got {block_h!r}")
    # Tuned entries are keyed by shape, not dtype: one tuned on fp16 may hold twice the heads an
    # fp32 tile fits in the UB. Such a tile is split rather than overflowing the buffer.
    cap = _max_block_h(rot_dim // 2, dtype)
    if block_h > cap:
        _warn_block_h_cut(kernel, dev.sku.name, block_h, cap, str(dtype).removeprefix("torch."))
        config["BLOCK_H"] = cap
    return config, persistent_grid(num_tokens, device=dev)


def _kernel_cache(cos_sin_cache: torch.Tensor, query: torch.Tensor, shim_active: bool) -> torch.Tensor:
    # vLLM casts the cache to the query dtype before rotating. The kernel casts each row itself;
    # only when bf16 runs as fp32 on the interpreter is the bf16 rounding applied here.
    if shim_active and query.dtype == torch.bfloat16 and cos_sin_cache.dtype != torch.bfloat16:
        return cos_sin_cache.to(torch.bfloat16)
    return cos_sin_cache


def _rotation_args(
    shim: Any,
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    num_tokens: int,
    token_shape: tuple[int, ...],
    head_size: int,
    layout: tuple[int, int, int, int, int, int],
) -> dict[str, Any]:
    """The runtime arguments both kernels share (query, key, cache and their layout), taken from
    the tensors the bf16 shim hands the kernel: its fp32 copies of bf16 views may be laid out
    differently, so strides come from them (``layout``, the callers' tensors' one, serves when
    the kernel gets the callers' tensors)."""
    q = shim.output(query)
    k = shim.output(key)
    cache = shim.input(_kernel_cache(cos_sin_cache, query, shim.active))
    if q is not query or k is not key:
        layout = _qk_layout(q, k, num_tokens, token_shape, head_size)
    q_token_stride, q_head_stride, n_q, k_token_stride, k_head_stride, n_k = layout
    return dict(
        q_ptr=q, k_ptr=k if k is not None else q, cache_ptr=cache, num_tokens=num_tokens,
        max_pos=cos_sin_cache.shape[0],
        q_token_stride=q_token_stride, q_head_stride=q_head_stride, num_q_heads=n_q,
        k_token_stride=k_token_stride, k_head_stride=k_head_stride, num_k_heads=n_k,
        cache_stride=cache.stride(0),
    )  # fmt: skip


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """vLLM's rotary embedding (`RotaryEmbedding.forward_static`), in place on `query` and `key`.

    Args:
        positions: int32/int64 `[T]` or `[B, S]` (flattened to T tokens): the cache row of each token.
        query: `[T, Hq*D]`, `[T, Hq, D]` or `[B, S, Hq*D]`, fp16/bf16/fp32, last dim contiguous (any token
            and head stride, e.g. a slice of a fused qkv tensor). Rotated in place.
        key: like `query` with its own head count, or None (only the query is rotated). In place.
        head_size: D.
        cos_sin_cache: `[max_pos, rot_dim]`, the cos half then the sin half of each row;
            `rot_dim <= head_size` (dims `rot_dim..D` pass through), `rot_dim <= ROPE_MAX_ROTARY_DIM`.
        is_neox: NeoX pairs (i, i + rot_dim/2); else GPT-J pairs (2i, 2i + 1).
        offsets: optional, the shape of `positions`: the cache row becomes `positions + offsets`.

    Returns:
        `(query, key)`, the same tensors, rotated.

    Raises:
        TypeError: a dtype or Python type is wrong.
        ValueError: a shape, stride, device or limit is wrong; with input checks on, a position
            (plus offset) outside `[0, max_pos)`.

    With checks off, a token whose cache row is outside the cache is left unchanged; nothing outside
    `query`, `key` and the valid cache rows is read or written (see the module docstring).
    """
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

    config, grid = _launch_config(
        "rope", head_size, rot_dim, max(num_q_heads, num_k_heads), num_tokens, query.dtype
    )
    with bf16_shim() as shim:
        LaunchSpec(
            name="rope",
            kernel=_rope_kernel,
            grid=grid,
            args=dict(
                pos_ptr=pos,
                off_ptr=off if off is not None else pos,
                **_rotation_args(shim, query, key, cos_sin_cache, num_tokens, token_shape, head_size, layout),
            ),
            constexprs=dict(
                HALF_ROT=rot_dim // 2,
                HALF_PAD=triton.next_power_of_2(rot_dim // 2),
                BLOCK_H=config["BLOCK_H"],
                IS_NEOX=is_neox,
                HAS_KEY=key is not None,
                HAS_OFFSETS=off is not None,
            ),
            config=config,
        ).launch()  # fmt: skip
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
    """vLLM's `MRotaryEmbedding` rotation (Qwen2-VL / Qwen2.5-VL / Qwen3-VL), in place.

    Args:
        positions: int32/int64 `[3, T]` (the T/H/W position rows) or `[T]` (text only: plain rope).
        query: `[T, Hq*D]` or `[T, Hq, D]`, fp16/bf16/fp32, last dim contiguous. Rotated in place.
        key: like `query`, or None. In place.
        head_size: D.
        cos_sin_cache: `[max_pos, rot_dim]`, cos half then sin half.
        is_neox: NeoX or GPT-J pairing, as in `rotary_embedding`.
        mrope_section: `[t, h, w]` channel counts, non-negative ints summing to `rot_dim // 2`.
        mrope_interleaved: the interleaved (Qwen3-VL) channel layout instead of contiguous sections.

    Returns:
        `(query, key)`, the same tensors, rotated.

    Raises:
        TypeError: a dtype or Python type is wrong (e.g. `mrope_section` not a list of 3 ints).
        ValueError: a shape, section sum, device or limit is wrong; with input checks on, a position
            outside the cache.

    With checks off, a token with any of its three positions outside the cache is left unchanged.
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

    config, grid = _launch_config(
        "mrope", head_size, rot_dim, max(num_q_heads, num_k_heads), num_tokens, query.dtype
    )
    with bf16_shim() as shim:
        LaunchSpec(
            name="mrope",
            kernel=_mrope_kernel,
            grid=grid,
            args=dict(
                pos_ptr=pos,
                pos_row_stride=pos.stride(0),
                **_rotation_args(
                    shim, query, key, cos_sin_cache, num_tokens, (num_tokens,), head_size, layout
                ),
            ),
            constexprs=dict(
                HALF_ROT=rot_dim // 2,
                HALF_PAD=triton.next_power_of_2(rot_dim // 2),
                SECTION_T=sections[0],
                SECTION_H=sections[1],
                SECTION_W=sections[2],
                INTERLEAVED=mrope_interleaved,
                BLOCK_H=config["BLOCK_H"],
                IS_NEOX=is_neox,
                HAS_KEY=key is not None,
            ),
            config=config,
        ).launch()  # fmt: skip
    return query, key
