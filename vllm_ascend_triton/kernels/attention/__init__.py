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
cache's dtype. With input checks on, a slot outside the cache (or < -1) raises ValueError
(with checks off it is skipped: see "hostile input" below).

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

Errors, limits and hostile input
--------------------------------
Static mistakes always raise before any launch: TypeError for a dtype or a Python type (`out`
must have q's dtype, caches q's dtype, metadata int32/int64, `softmax_scale`/`softcap` numbers,
`window_size` ints), ValueError for shapes, layouts and values (non-finite `softmax_scale` or
`softcap`, metadata vectors that are not dense). The limits of both kernels live in
`kernels/limits.py` (`ATTENTION_*`: head size <= 256 for both, block size a multiple of 16,
positions < 2^24, at most 64 KV splits, the query heads of one KV head x head size within a
third of the SKU's UB: e.g. MQA with 128 heads of 256 in fp32 is refused, in bf16 it fits);
past one, a ValueError names it.

Data-dependent checks (slot range, block ids, block-table coverage, cu_seqlens_q/seqused_k
consistency) need the metadata on the host, a device sync on an NPU, so they run only with
input checks on (`VAT_CHECK_INPUTS`; default on for the interpreter, off on an NPU) and raise
ValueError. With checks off the kernels never read or write outside their tensors, whatever the
data, and the results are defined:

- `reshape_and_cache`: a slot outside `[0, num_blocks * block_size)` (-1 included) skips its
  token; every other token is written exactly.
- `unified_attention`: a KV tile whose block id lies outside `[0, num_blocks)` is masked out of
  the softmax (its keys are never loaded, the address is clamped to block 0); keys past what the
  block table covers (`seqused_k > block_table.shape[1] * block_size`) are never looked up, as if
  masked, while query positions still follow `seqused_k`; a row that then sees no key and no sink
  gets 0. Rows of `q`/`out` outside `[0, q.shape[0])` are never touched, whatever
  `cu_seqlens_q` says (malformed `cu_seqlens_q` gives unspecified values inside `out`).
- NaN/inf data is computed with, never checked: a non-finite q element poisons only its own
  (token, head) row; a non-finite K value reaches only rows that see that key; a non-finite V
  value reaches rows of the same query tile and KV head whose tile-wide key range holds it (for
  decode exactly the rows that see it; for prefill possibly other rows of that tile of
  `BLOCK_Q` tokens, since one P.V product serves the tile); a non-finite sink or ALiBi slope
  poisons that head's rows (a -inf sink is no sink). Cache rows no sequence reads (block tails,
  unused blocks, padding) never reach any output. reshape_and_cache copies values as they are.

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
  S, P, acc) within the SKU's UB budget (`runtime.ub.ub_budget_bytes`: the SKU's UB, double
  buffering counted): `_ub_estimate` below (it also counts the fp32 S/P/acc tiles): on a 192 KB
  UB fp16 D=128 block 128 -> BLOCK_M 16, TILE_N 64; fp32 D=256 -> TILE_N 16. The adapter IR of
  the variants' defaults allocates 6-37 KB of buffers (`vat compile` reports it; modelled).
  Decode-only batches keep the minimum 16 rows (one real token per sequence; the tile's other
  tokens are masked).
- Split-KV (decode, few sequences): when `num_seqs * Hkv` work items cannot fill the cube
  cores, each item's KV range is cut into `num_kv_splits` segments (work item = (tile, KV head,
  segment)); each segment writes its unnormalized accumulator, running max and sum to an fp32
  workspace, and a vector-core reduction kernel combines segments (and the sink) per
  (token, head). The host wrapper picks the split count from the cube core count.
- Index math: int32 inside a tile; base addresses of cache blocks, tokens and workspace rows
  are scalar int64 products so large caches cannot overflow (element offsets past 2^31: the
  lowered TTIR shows i64 offsets on every cache/q/out/workspace base address, checked by
  tests/kernels/test_attention_sizes.py).
- Masks for hostile metadata cost one scalar compare per KV tile (block id in range, clamped)
  and key-range bounds in the K/V load masks; the adapter IR still has no discrete accesses.
- `reshape_and_cache` is vector-only (`persistent_grid(tokens)` on the vector cores): per token
  one scalar slot load, then `[BLOCK_H, HEAD_PAD]` contiguous tiles of K and V copied to the
  block row (no per-element gather).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

# First: applies a requested backend (VAT_BACKEND=interpreter) before triton is imported, since
# triton decides interpreter or compiler for its own jit functions at import time.
from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  # isort: skip

import triton  # noqa: E402  # isort: skip

from vllm_ascend_triton.kernels.attention._kernels import (
    _attention_kernel,
    _reshape_and_cache_kernel,
    _split_reduce_kernel,
)
from vllm_ascend_triton.kernels.attention.reference import (
    make_paged_case,
    reshape_and_cache_reference,
    unified_attention_reference,
)
from vllm_ascend_triton.kernels.limits import (
    ATTENTION_MAX_HEAD_SIZE,
    ATTENTION_MAX_KV_SPLITS,
    ATTENTION_MAX_POSITION,
    ATTENTION_MAX_Q_TILE_UB_FRACTION,
    ATTENTION_MIN_BLOCK_SIZE_MULTIPLE,
)
from vllm_ascend_triton.runtime.checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from vllm_ascend_triton.runtime.configs import ShapeCache, dtype_key, lookup_config
from vllm_ascend_triton.runtime.device import current_device, plan_for
from vllm_ascend_triton.runtime.launch import LaunchSpec, bf16_shim, checks_enabled, persistent_grid
from vllm_ascend_triton.runtime.ub import dtype_bytes, tile_elements, ub_budget_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "reshape_and_cache",
    "unified_attention",
    "reshape_and_cache_reference",
    "unified_attention_reference",
    "make_paged_case",
]

_MIN_BLOCK_M = 16  # cube fractal: fewer rows waste the same cube pass anyway
_AUTO_MAX_SPLITS = 16  # the wrapper's own split choice stays at or below this
_MIN_TILES_PER_SPLIT = 2
# reshape_and_cache live tiles per program: the K and V tiles and their casts to the cache dtype.
_RC_LIVE_TILES = 4


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


def _default_attention_config(
    head_pad: int, block_size: int, elem_bytes: int, block_m: int, ub_budget: int
) -> dict:
    """The widest KV tile (a power of two dividing the block, at most 128) whose live tiles fit
    the SKU's UB budget (`runtime.ub.ub_budget_bytes`: double buffering counted)."""
    tile_n = min(_largest_pow2_divisor(block_size), 128)
    while tile_n > 16 and _ub_estimate(block_m, tile_n, head_pad, elem_bytes) > ub_budget:
        tile_n //= 2
    return {"BLOCK_M": block_m, "TILE_N": tile_n}


def _attention_launch_config(
    sku: str, head_size: int, block_size: int, dtype: torch.dtype, qpk: int, decode: bool
) -> dict:
    head_pad = triton.next_power_of_2(head_size)
    qpk_pad = triton.next_power_of_2(qpk)
    with plan_for(sku) as dev:
        budget = ub_budget_bytes(dev)
    default = _default_attention_config(
        head_pad, block_size, dtype_bytes(dtype), max(_MIN_BLOCK_M, qpk_pad), budget
    )
    key = {
        "head_size": head_size,
        "block_size": block_size,
        "qpk": qpk,
        "dtype": dtype_key(dtype),
        "decode": decode,
    }
    cfg = lookup_config(sku, "unified_attention", key, default)
    tile_n = cfg.get("TILE_N")
    if not isinstance(tile_n, int) or tile_n < 1 or tile_n & (tile_n - 1):
        raise ValueError(f"unified_attention config for {sku} needs a power-of-two TILE_N, got {tile_n!r}")
    # The nearest tuned entry may come from another block size: a KV tile never straddles blocks.
    if block_size % tile_n:
        logger.debug(
            "unified_attention: TILE_N %d from %s cut to divide block_size %d", tile_n, sku, block_size
        )
        tile_n = _largest_pow2_divisor(block_size)
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
    return max(1, min(by_cores, by_length, _AUTO_MAX_SPLITS))


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
    """Write K/V rows into the paged caches (vLLM's `reshape_and_cache_flash`).

    Args:
        key: `[T', Hkv, D]` fp16/bf16/fp32 (T' >= T: vLLM pads).
        value: `[T', Hkv, D]`.
        key_cache: `[num_blocks, block_size, Hkv, D]`, possibly a strided view (vLLM 0.32 packs K and V
            in one tensor). Written in place; values are cast to its dtype.
        value_cache: the same shape. Written in place.
        slot_mapping: int32/int64 dense `[T]`: token t goes to `cache[slot // block_size, slot %
            block_size]`; -1 skips the token.

    Returns:
        None.

    Raises:
        TypeError: a wrong dtype.
        ValueError: a wrong shape, layout, device or limit; with input checks on, a slot outside the
            cache or below -1. With checks off such a slot is skipped; nothing outside the caches'
            valid rows is written.
    """
    check_tensor("key", key, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("value", value, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("key_cache", key_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("value_cache", value_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("slot_mapping", slot_mapping, dtypes=INDEX_DTYPES, ndim=1)
    _check_dense_vector("slot_mapping", slot_mapping)
    check_same_device(
        key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping
    )
    num_blocks, block_size, num_heads, head_size = key_cache.shape
    if value_cache.shape != key_cache.shape:
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
    if not 1 <= head_size <= ATTENTION_MAX_HEAD_SIZE:
        raise ValueError(f"key_cache's head_size must be in [1, {ATTENTION_MAX_HEAD_SIZE}], got {head_size}")
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
    plan_key = ("reshape_and_cache", head_size, num_heads, key.dtype, key_cache.dtype, num_tokens)
    plan = _PLANS.get(plan_key)
    if plan is None:
        plan = _PLANS.put(
            plan_key, _plan_cache_write(head_size, num_heads, key.dtype, key_cache.dtype, num_tokens)
        )
    head_pad, block_h, cfg, grid = plan
    with bf16_shim() as shim:
        k_in, v_in = shim.input(key[:num_tokens]), shim.input(value[:num_tokens])
        kc, vc = shim.output(key_cache), shim.output(value_cache)
        LaunchSpec(
            name="reshape_and_cache",
            kernel=_reshape_and_cache_kernel,
            grid=grid,
            args=dict(
                key_ptr=k_in, value_ptr=v_in, kc_ptr=kc, vc_ptr=vc, slot_ptr=slot_mapping,
                num_tokens=num_tokens, num_heads=num_heads, block_size=block_size,
                num_slots=num_blocks * block_size,
                key_stride_t=k_in.stride(0), key_stride_h=k_in.stride(1),
                value_stride_t=v_in.stride(0), value_stride_h=v_in.stride(1),
                kc_stride_b=kc.stride(0), kc_stride_s=kc.stride(1), kc_stride_h=kc.stride(2),
                vc_stride_b=vc.stride(0), vc_stride_s=vc.stride(1), vc_stride_h=vc.stride(2),
            ),
            constexprs=dict(HEAD_SIZE=head_size, HEAD_PAD=head_pad, BLOCK_H=block_h),
            config=cfg,
        ).launch()  # fmt: skip


_PLANS = ShapeCache("attention")
# One fp32 element per device, passed for pointers a launch never dereferences (workspaces of an
# unsplit launch, absent ALiBi slopes or sinks).
_DUMMIES: dict[torch.device, torch.Tensor] = {}


def _dummy(device: torch.device) -> torch.Tensor:
    dummy = _DUMMIES.get(device)
    if dummy is None:
        dummy = _DUMMIES[device] = torch.zeros(1, dtype=torch.float32, device=device)
    return dummy


def _plan_cache_write(
    head_size: int, num_heads: int, dtype: torch.dtype, cache_dtype: torch.dtype, num_tokens: int
) -> tuple[int, int, dict, tuple[int]]:
    """(HEAD_PAD, BLOCK_H, config, grid) of a `reshape_and_cache` launch."""
    key_dtype = dtype
    head_pad = triton.next_power_of_2(head_size)
    dev = current_device()
    # Tiles hold the wider of the input and cache dtypes (the cast happens in registers).
    elem = max(dtype_bytes(key_dtype), dtype_bytes(cache_dtype))
    tile = tile_elements(_RC_LIVE_TILES, elem, device=dev)
    cfg = lookup_config(
        dev.sku.name,
        "reshape_and_cache",
        {"head_size": head_size, "num_kv_heads": num_heads},
        {"BLOCK_H": max(1, min(triton.next_power_of_2(num_heads), tile // head_pad))},
    )
    block_h = cfg.get("BLOCK_H")
    if not isinstance(block_h, int) or block_h < 1 or block_h & (block_h - 1):
        raise ValueError(
            f"reshape_and_cache config for {dev.sku.name} needs a power-of-two BLOCK_H, got {block_h!r}"
        )
    return head_pad, block_h, cfg, persistent_grid(num_tokens, device=dev)


def _check_query_group_fits(qpk: int, head_size: int, dtype: torch.dtype, sku: str, ub_bytes: int) -> None:
    """All query heads of a KV head share one tile: their Q block must fit the UB (limits.py)."""
    rows = max(_MIN_BLOCK_M, triton.next_power_of_2(qpk))
    q_block = rows * triton.next_power_of_2(head_size) * dtype_bytes(dtype)
    limit = int(ub_bytes * ATTENTION_MAX_Q_TILE_UB_FRACTION)
    if q_block > limit:
        raise ValueError(
            f"{qpk} query heads per KV head x head_size {head_size} in {str(dtype).removeprefix('torch.')} "
            f"make a {q_block}-byte query tile, more than {limit} bytes "
            f"({ATTENTION_MAX_Q_TILE_UB_FRACTION:.2f} of {sku}'s Unified Buffer); use fewer query heads "
            "per KV head or a 16-bit dtype"
        )


def _check_dense_vector(name: str, t: torch.Tensor | None) -> None:
    if t is not None and t.shape[0] > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous, got stride {t.stride(0)}")


def _check_float(name: str, value: object) -> float:
    """A finite Python number (a scalar argument, not data: always checked)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


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
    if out.dtype != q.dtype:
        raise TypeError(f"out must have q's dtype {q.dtype}, got {out.dtype}")
    num_tokens, num_q_heads, head_size = q.shape
    _, block_size, num_kv_heads, cache_head = k_cache.shape
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"v_cache shape {tuple(v_cache.shape)} must equal k_cache shape {tuple(k_cache.shape)}"
        )
    if cache_head != head_size:
        raise ValueError(f"k_cache head_size {cache_head} must equal q's head_size {head_size}")
    if not 1 <= head_size <= ATTENTION_MAX_HEAD_SIZE:
        raise ValueError(f"head_size must be in [1, {ATTENTION_MAX_HEAD_SIZE}], got {head_size}")
    if num_q_heads % num_kv_heads:
        raise ValueError(
            f"q's head count {num_q_heads} must be a multiple of k_cache's KV head count {num_kv_heads}"
        )
    if out.shape != q.shape:
        raise ValueError(f"out shape {tuple(out.shape)} must equal q shape {tuple(q.shape)}")
    if block_size < 1 or block_size % ATTENTION_MIN_BLOCK_SIZE_MULTIPLE:
        raise ValueError(
            f"k_cache block_size must be a multiple of {ATTENTION_MIN_BLOCK_SIZE_MULTIPLE}, got {block_size}"
        )
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        check_last_dim_contiguous(name, t)
    num_seqs = seqused_k.shape[0]
    if cu_seqlens_q.shape[0] != num_seqs + 1:
        raise ValueError(
            f"cu_seqlens_q must have len(seqused_k) + 1 = {num_seqs + 1} entries, got {cu_seqlens_q.shape[0]}"
        )
    if block_table.shape[0] < num_seqs:
        raise ValueError(f"block_table must have a row per sequence ({num_seqs}), got {block_table.shape[0]}")
    if block_table.shape[1] > 1 and block_table.stride(1) != 1:
        raise ValueError(
            f"block_table must be contiguous along its last dim, got strides {block_table.stride()}"
        )
    # The kernel reads these as dense vectors (element i at offset i).
    for name, t in (
        ("cu_seqlens_q", cu_seqlens_q),
        ("seqused_k", seqused_k),
        ("alibi_slopes", alibi_slopes),
        ("sinks", sinks),
    ):
        _check_dense_vector(name, t)
    for name, t, n in (("alibi_slopes", alibi_slopes, num_q_heads), ("sinks", sinks, num_q_heads)):
        if t is not None and t.shape[0] != n:
            raise ValueError(f"{name} must have one entry per query head ({n}), got {t.shape[0]}")
    check_positive_int("max_seqlen_q", max_seqlen_q, minimum=0)
    check_positive_int("max_seqlen_k", max_seqlen_k, minimum=0)
    if max_seqlen_k >= ATTENTION_MAX_POSITION:
        raise ValueError(
            f"max_seqlen_k must be < {ATTENTION_MAX_POSITION} (positions are compared in fp32), "
            f"got {max_seqlen_k}"
        )
    _check_float("softmax_scale", softmax_scale)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if _check_float("softcap", softcap) < 0:
        raise ValueError(f"softcap must be >= 0 (0 = off), got {softcap!r}")
    if type(window_size) not in (tuple, list) and (
        not isinstance(window_size, Sequence) or isinstance(window_size, str)
    ):  # the exact-type test first: an ABC isinstance check costs about a microsecond
        raise TypeError(f"window_size must be a (left, right) pair of ints, got {type(window_size).__name__}")
    if len(window_size) != 2:
        raise ValueError(f"window_size must be a (left, right) pair of ints >= -1, got {window_size!r}")
    for w in window_size:
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"window_size must hold ints, got {window_size!r}")
        if w < -1:
            raise ValueError(f"window_size entries must be >= -1 (-1 = no window), got {window_size!r}")
    if num_kv_splits is not None:
        check_positive_int("num_kv_splits", num_kv_splits)
        if num_kv_splits > ATTENTION_MAX_KV_SPLITS:
            raise ValueError(f"num_kv_splits must be <= {ATTENTION_MAX_KV_SPLITS}, got {num_kv_splits}")

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
    """vLLM's unified paged attention for a mixed prefill / chunked-prefill / decode batch.

    Args:
        q: `[T, Hq, D]` fp16/bf16/fp32.
        k_cache: `[num_blocks, block_size, Hkv, D]` in q's dtype (Hq a multiple of Hkv: GQA/MQA).
        v_cache: the same shape and dtype.
        out: `[T', Hq, D]` in q's dtype, T' >= T; rows `[0, cu_seqlens_q[-1])` are written in place.
        cu_seqlens_q: int32/int64 `[S+1]` query row offsets per sequence.
        max_seqlen_q: the longest query chunk (1 = a pure decode batch).
        seqused_k: int32/int64 `[S]` keys per sequence; the query chunk sits at the end of its context.
        max_seqlen_k: the longest context.
        softmax_scale: finite float.
        causal: bool.
        window_size: `(left, right)`, -1 = none (vLLM's rule: only `left` is used).
        block_table: int32/int64 `[S, max_blocks]` cache block ids per sequence.
        softcap: 0 for none, else `softcap * tanh(score / softcap)`.
        alibi_slopes: optional fp32 `[Hq]`.
        sinks: optional `[Hq]` one extra logit per head.
        num_kv_splits: keyword-only: None = decided here, 1 = never split, n > 1 = force n segments.

    Returns:
        `out`.

    Raises:
        TypeError: a wrong dtype or Python type.
        ValueError: a wrong shape, layout, non-finite scale or a limit (`kernels.limits`); with input
            checks on, inconsistent metadata (block ids, coverage, lengths). With checks off, out-of-range
            block ids read nothing outside the caches (module docstring).
    """
    left, num_seqs = _validate_attention(
        q, k_cache, v_cache, out, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k,
        softmax_scale, causal, window_size, block_table, softcap, alibi_slopes, sinks, num_kv_splits,
    )  # fmt: skip
    num_tokens, num_q_heads, head_size = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    qpk = num_q_heads // num_kv_heads
    decode = max_seqlen_q == 1
    plan_key = ("unified_attention", head_size, block_size, q.dtype, qpk, decode)
    plan = _PLANS.get(plan_key)
    if plan is None:
        device = current_device()
        _check_query_group_fits(qpk, head_size, q.dtype, device.sku.name, device.ub_bytes)
        if num_tokens == 0 or num_seqs == 0 or max_seqlen_q == 0:
            return out
        cfg = _attention_launch_config(device.sku.name, head_size, block_size, q.dtype, qpk, decode=decode)
        plan = _PLANS.put(plan_key, (device, cfg))
    device, cfg = plan
    if num_tokens == 0 or num_seqs == 0 or max_seqlen_q == 0:
        return out
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
        dummy = _dummy(q.device)
        if split:
            ws_acc = torch.empty(
                num_tokens * num_q_heads * splits * head_pad, dtype=torch.float32, device=q.device
            )
            ws_m = torch.empty(num_tokens * num_q_heads * splits, dtype=torch.float32, device=q.device)
            ws_l = torch.empty_like(ws_m)
        else:
            ws_acc = ws_m = ws_l = dummy
        work = num_q_tiles * num_kv_heads * splits
        sinks_arg = sinks_in if sinks is not None else dummy
        LaunchSpec(
            name="unified_attention",
            kernel=_attention_kernel,
            grid=persistent_grid(work, uses_cube=True, device=device),
            args=dict(
                q_ptr=q_in, k_ptr=k_in, v_ptr=v_in, out_ptr=o, cu_q_ptr=cu_seqlens_q,
                seqused_ptr=seqused_k, bt_ptr=block_table,
                alibi_ptr=alibi_slopes if alibi_slopes is not None else dummy, sinks_ptr=sinks_arg,
                ws_acc_ptr=ws_acc, ws_m_ptr=ws_m, ws_l_ptr=ws_l,
                num_seqs=num_seqs, num_q_tiles=num_q_tiles, num_kv_heads=num_kv_heads, num_segments=splits,
                num_tokens=num_tokens, num_blocks=k_cache.shape[0],
                max_keys=block_table.shape[1] * block_size,
                q_stride_t=q_in.stride(0), q_stride_h=q_in.stride(1),
                o_stride_t=o.stride(0), o_stride_h=o.stride(1),
                k_stride_b=k_in.stride(0), k_stride_s=k_in.stride(1), k_stride_h=k_in.stride(2),
                v_stride_b=v_in.stride(0), v_stride_s=v_in.stride(1), v_stride_h=v_in.stride(2),
                bt_stride=block_table.stride(0),
                scale=float(softmax_scale), softcap=float(softcap), window=left + 1,
            ),
            constexprs=dict(
                HEAD_SIZE=head_size, HEAD_PAD=head_pad, QPK=qpk, QPK_PAD=cfg["QPK_PAD"],
                BLOCK_Q=cfg["BLOCK_Q"], BLOCK_M=cfg["BLOCK_M"], BLOCK_SIZE=block_size, TILE_N=cfg["TILE_N"],
                CAUSAL=causal, USE_WINDOW=left >= 0, USE_SOFTCAP=softcap > 0,
                USE_ALIBI=alibi_slopes is not None, USE_SINKS=sinks is not None, SPLIT=split,
            ),
            config=cfg,
            uses_cube=True,
        ).launch()  # fmt: skip
        if split:
            LaunchSpec(
                name="unified_attention_split_reduce",
                kernel=_split_reduce_kernel,
                grid=persistent_grid(num_tokens * num_q_heads, device=device),
                args=dict(
                    out_ptr=o, ws_acc_ptr=ws_acc, ws_m_ptr=ws_m, ws_l_ptr=ws_l, sinks_ptr=sinks_arg,
                    cu_q_ptr=cu_seqlens_q, num_seqs=num_seqs, num_tokens=num_tokens,
                    num_q_heads=num_q_heads, num_segments=splits,
                    o_stride_t=o.stride(0), o_stride_h=o.stride(1),
                ),
                constexprs=dict(
                    HEAD_SIZE=head_size, HEAD_PAD=head_pad, SEG_PAD=triton.next_power_of_2(splits),
                    USE_SINKS=sinks is not None,
                ),
                config={"num_kv_splits": splits},
            ).launch()  # fmt: skip
    return out
