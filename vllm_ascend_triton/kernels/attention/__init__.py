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
- The KV loop is tiled BY CACHE BLOCK (the walk is shared with MLA: `kernels.paged`): a KV tile
  is `TILE_N` keys with `TILE_N` a power of two dividing `block_size`, so a tile never straddles
  blocks. Per tile the kernel loads ONE scalar
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
from collections.abc import Sequence

import torch

# First: applies a requested backend (VAT_BACKEND=interpreter) before triton is imported, since
# triton decides interpreter or compiler for its own jit functions at import time.
from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  # isort: skip

import triton  # noqa: E402  # isort: skip

from vllm_ascend_triton.kernels import paged
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


def _default_attention_config(
    head_pad: int, block_size: int, elem_bytes: int, block_m: int, ub_budget: int
) -> dict:
    """The widest KV tile (a power of two dividing the block, at most 128) whose live tiles fit
    the SKU's UB budget (`runtime.ub.ub_budget_bytes`: double buffering counted)."""
    tile_n = min(paged.largest_pow2_divisor(block_size), 128)
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
        tile_n = paged.largest_pow2_divisor(block_size)
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
    """Decode batches that leave cube cores idle cut each context into segments (prefill never)."""
    if max_seqlen_q != 1:
        return 1
    return paged.choose_splits(num_seqs * num_kv_heads, max_seqlen_k, tile_n, cube_cores)


_PLANS = ShapeCache("attention")


# ----------------------------------------------------------------------------------------------
# reshape_and_cache
# ----------------------------------------------------------------------------------------------


def _plan_cache_write(key, value, key_cache, value_cache, slot_mapping) -> paged.Plan:
    """Static checks and the launch template of a `reshape_and_cache` call shape."""
    check_tensor("key", key, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("value", value, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("key_cache", key_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("value_cache", value_cache, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor("slot_mapping", slot_mapping, dtypes=INDEX_DTYPES, ndim=1)
    paged.check_dense_vector("slot_mapping", slot_mapping)
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
    bf16 = torch.bfloat16
    plan = paged.Plan(
        n=num_tokens, num_slots=num_blocks * block_size,
        shim=bf16 in (key.dtype, value.dtype, key_cache.dtype, value_cache.dtype),
    )  # fmt: skip
    if num_tokens == 0:
        return plan
    dev = current_device()
    head_pad = triton.next_power_of_2(head_size)
    # Tiles hold the wider of the input and cache dtypes (the cast happens in registers).
    elem = max(dtype_bytes(key.dtype), dtype_bytes(key_cache.dtype))
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
    ph = paged.dummy(key.device)
    plan.template = LaunchSpec(
        "reshape_and_cache", _reshape_and_cache_kernel, persistent_grid(num_tokens, device=dev),
        _cache_write_args(ph, ph, ph, ph, slot_mapping, num_tokens, num_heads, block_size, plan.num_slots,
                          key, value, key_cache, value_cache),
        dict(HEAD_SIZE=head_size, HEAD_PAD=head_pad, BLOCK_H=block_h),
        cfg,
    )  # fmt: skip
    return plan


def _cache_write_args(k, v, kc, vc, slots, num_tokens, num_heads, block_size, num_slots, ks, vs, kcs, vcs):
    """Runtime arguments of the cache write (`k`..`vc` the pointers, strides read from `ks`..`vcs`,
    the tensors the kernel gets)."""
    return dict(
        key_ptr=k, value_ptr=v, kc_ptr=kc, vc_ptr=vc, slot_ptr=slots,
        num_tokens=num_tokens, num_heads=num_heads, block_size=block_size, num_slots=num_slots,
        key_stride_t=ks.stride(0), key_stride_h=ks.stride(1),
        value_stride_t=vs.stride(0), value_stride_h=vs.stride(1),
        kc_stride_b=kcs.stride(0), kc_stride_s=kcs.stride(1), kc_stride_h=kcs.stride(2),
        vc_stride_b=vcs.stride(0), vc_stride_s=vcs.stride(1), vc_stride_h=vcs.stride(2),
    )  # fmt: skip


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
    tensors = (key, value, key_cache, value_cache, slot_mapping)
    plan = paged.cache_write_plan(_PLANS, _plan_cache_write, tensors)
    if plan is None:
        return
    n = plan.n
    template = plan.template
    if not plan.shim:
        # The kernel reads rows [0, n) only: the caller's (padded) tensors go in as they are.
        template.with_args(
            {**template.args, "key_ptr": key, "value_ptr": value, "kc_ptr": key_cache, "vc_ptr": value_cache,
             "slot_ptr": slot_mapping}
        ).launch()  # fmt: skip
        return
    a = template.args
    with bf16_shim() as shim:
        k_in, v_in = shim.input(key[:n]), shim.input(value[:n])
        kc, vc = shim.output(key_cache), shim.output(value_cache)
        template.with_args(
            _cache_write_args(
                k_in, v_in, kc, vc, slot_mapping, n, a["num_heads"], a["block_size"], a["num_slots"],
                k_in, v_in, kc, vc,
            )
        ).launch()  # fmt: skip


# ----------------------------------------------------------------------------------------------
# unified_attention
# ----------------------------------------------------------------------------------------------


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


def _validate_attention(
    q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, causal, alibi_slopes, sinks
) -> int:  # fmt: skip
    """Static checks of an attention call shape (tensors and `causal`); returns the number of
    sequences."""
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
    paged.check_block_table(block_table, num_seqs)
    # The kernel reads these as dense vectors (element i at offset i).
    for name, t in (
        ("cu_seqlens_q", cu_seqlens_q),
        ("seqused_k", seqused_k),
        ("alibi_slopes", alibi_slopes),
        ("sinks", sinks),
    ):
        paged.check_dense_vector(name, t)
    for name, t, n in (("alibi_slopes", alibi_slopes, num_q_heads), ("sinks", sinks, num_q_heads)):
        if t is not None and t.shape[0] != n:
            raise ValueError(f"{name} must have one entry per query head ({n}), got {t.shape[0]}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    return num_seqs


def _check_attention_scalars(max_seqlen_q, max_seqlen_k, softmax_scale, window_size, softcap, num_kv_splits):
    """Per-call checks of the host values that may change between calls of one shape; returns
    the left window (-1 = none)."""
    check_positive_int("max_seqlen_q", max_seqlen_q, minimum=0)
    check_positive_int("max_seqlen_k", max_seqlen_k, minimum=0)
    if max_seqlen_k >= ATTENTION_MAX_POSITION:
        raise ValueError(
            f"max_seqlen_k must be < {ATTENTION_MAX_POSITION} (positions are compared in fp32), "
            f"got {max_seqlen_k}"
        )
    paged.check_float("softmax_scale", softmax_scale)
    if paged.check_float("softcap", softcap) < 0:
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
    return window_size[0]


def _check_attention_values(
    cu_seqlens_q, seqused_k, block_table, num_tokens, max_seqlen_q, max_seqlen_k, block_size, num_blocks
) -> None:  # fmt: skip
    """Data checks (input checks on): query offsets, key counts and the block table."""
    q_lens = paged.check_cu_seqlens(
        "cu_seqlens_q", cu_seqlens_q.tolist(), num_tokens, "max_seqlen_q", max_seqlen_q
    )
    used = seqused_k.tolist()
    bad = [s for s in range(len(used)) if used[s] < q_lens[s]]
    if bad:
        s = bad[0]
        raise ValueError(f"seqused_k[{s}]={used[s]} is smaller than the sequence's query length {q_lens[s]}")
    if max(used) > max_seqlen_k:
        raise ValueError(f"a seqused_k value ({max(used)}) exceeds max_seqlen_k={max_seqlen_k}")
    paged.check_block_table_values("seqused_k", used, block_table, block_size, num_blocks)


def _plan_attention(
    q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, alibi_slopes, sinks, causal
) -> paged.Plan:  # fmt: skip
    """Static checks and the shape facts of an attention call shape (configs and templates are
    added per launch variant by `_attention_templates`)."""
    num_seqs = _validate_attention(
        q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, causal, alibi_slopes, sinks
    )
    num_tokens, num_q_heads, head_size = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    qpk = num_q_heads // num_kv_heads
    device = current_device()
    _check_query_group_fits(qpk, head_size, q.dtype, device.sku.name, device.ub_bytes)
    return paged.Plan(
        num_seqs=num_seqs, num_tokens=num_tokens, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
        head_size=head_size, block_size=block_size, num_blocks=num_blocks, qpk=qpk, dtype=q.dtype,
        device=device, causal=causal, alibi=alibi_slopes is not None, sinks=sinks is not None,
        placeholder=paged.dummy(q.device), shim=q.dtype is torch.bfloat16, launches={}, configs={},
        static=_attention_static_args(
            q, k_cache, v_cache, out, block_table, num_seqs, num_tokens, block_size
        ),
    )  # fmt: skip


def _attention_static_args(q, k, v, o, block_table, num_seqs, num_tokens, block_size) -> dict:
    """Runtime arguments of the attention kernel that depend only on shapes and strides (read from
    the tensors the kernel gets)."""
    return dict(
        num_seqs=num_seqs, num_tokens=num_tokens, num_blocks=k.shape[0],
        max_keys=block_table.shape[1] * block_size,
        q_stride_t=q.stride(0), q_stride_h=q.stride(1), o_stride_t=o.stride(0), o_stride_h=o.stride(1),
        k_stride_b=k.stride(0), k_stride_s=k.stride(1), k_stride_h=k.stride(2),
        v_stride_b=v.stride(0), v_stride_s=v.stride(1), v_stride_h=v.stride(2),
        bt_stride=block_table.stride(0),
    )  # fmt: skip


def _plan_config(plan: paged.Plan, decode: bool) -> dict:
    """The launch config of a plan for decode or prefill batches (computed once each)."""
    cfg = plan.configs.get(decode)
    if cfg is None:
        cfg = plan.configs[decode] = _attention_launch_config(
            plan.device.sku.name, plan.head_size, plan.block_size, plan.dtype, plan.qpk, decode=decode
        )
    return cfg


_ATTENTION_TENSORS = (
    "q_ptr", "k_ptr", "v_ptr", "out_ptr", "cu_q_ptr", "seqused_ptr", "bt_ptr", "alibi_ptr", "sinks_ptr",
    "ws_acc_ptr", "ws_m_ptr", "ws_l_ptr",
)  # fmt: skip


def _attention_templates(
    plan: paged.Plan, decode: bool, use_window: bool, use_softcap: bool, splits: int
) -> tuple[dict, LaunchSpec, LaunchSpec | None]:
    """(config, main template, reduce template or None) of a plan for one launch variant."""
    variant = (decode, use_window, use_softcap, splits)
    hit = plan.launches.get(variant)
    if hit is not None:
        return hit
    cfg = _plan_config(plan, decode)
    ph, split = plan.placeholder, splits > 1
    num_q_tiles = plan.num_tokens // cfg["BLOCK_Q"] + plan.num_seqs
    main = LaunchSpec(
        "unified_attention", _attention_kernel,
        persistent_grid(num_q_tiles * plan.num_kv_heads * splits, uses_cube=True, device=plan.device),
        {
            **dict.fromkeys(_ATTENTION_TENSORS, ph), **plan.static, "num_q_tiles": num_q_tiles,
            "num_kv_heads": plan.num_kv_heads, "num_segments": splits, "scale": 1.0, "softcap": 0.0,
            "window": 0,
        },
        dict(
            HEAD_SIZE=plan.head_size, HEAD_PAD=cfg["HEAD_PAD"], QPK=plan.qpk, QPK_PAD=cfg["QPK_PAD"],
            BLOCK_Q=cfg["BLOCK_Q"], BLOCK_M=cfg["BLOCK_M"], BLOCK_SIZE=plan.block_size, TILE_N=cfg["TILE_N"],
            CAUSAL=plan.causal, USE_WINDOW=use_window, USE_SOFTCAP=use_softcap, USE_ALIBI=plan.alibi,
            USE_SINKS=plan.sinks, SPLIT=split,
        ),
        cfg,
        uses_cube=True,
    )  # fmt: skip
    reduce = None
    if split:
        reduce = LaunchSpec(
            "unified_attention_split_reduce", _split_reduce_kernel,
            persistent_grid(plan.num_tokens * plan.num_q_heads, device=plan.device),
            dict(
                out_ptr=ph, ws_acc_ptr=ph, ws_m_ptr=ph, ws_l_ptr=ph, sinks_ptr=ph, cu_q_ptr=ph,
                num_seqs=plan.num_seqs, num_tokens=plan.num_tokens, num_q_heads=plan.num_q_heads,
                num_segments=splits, o_stride_t=plan.static["o_stride_t"],
                o_stride_h=plan.static["o_stride_h"],
            ),
            dict(
                HEAD_SIZE=plan.head_size, HEAD_PAD=cfg["HEAD_PAD"], SEG_PAD=triton.next_power_of_2(splits),
                USE_SINKS=plan.sinks,
            ),
            {"num_kv_splits": splits},
        )  # fmt: skip
    hit = plan.launches[variant] = (cfg, main, reduce)
    return hit


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
    plan = paged.plan_call(
        _PLANS, "attention", _plan_attention,
        (q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, alibi_slopes, sinks), (causal,),
    )  # fmt: skip
    left = _check_attention_scalars(
        max_seqlen_q, max_seqlen_k, softmax_scale, window_size, softcap, num_kv_splits
    )
    num_seqs, num_tokens = plan.num_seqs, plan.num_tokens
    if checks_enabled() and num_seqs:
        _check_attention_values(
            cu_seqlens_q, seqused_k, block_table, num_tokens, max_seqlen_q, max_seqlen_k, plan.block_size,
            plan.num_blocks,
        )  # fmt: skip
    if num_tokens == 0 or num_seqs == 0 or max_seqlen_q == 0:
        return out
    decode = max_seqlen_q == 1
    splits = num_kv_splits
    if splits is None:
        # From max_seqlen_k, which may change between graph replays: the kernel derives each
        # segment from seqused_k on the device, so any recorded count is correct for any lengths.
        splits = 1
        if decode:
            tile_n = _plan_config(plan, True)["TILE_N"]
            splits = paged.choose_splits(
                num_seqs * plan.num_kv_heads, max_seqlen_k, tile_n, plan.device.cube_cores
            )
    _, main, reduce = _attention_templates(plan, decode, left >= 0, softcap > 0, splits)
    ph = plan.placeholder
    if splits > 1:
        rows = num_tokens * plan.num_q_heads * splits
        ws_acc = torch.empty(rows * main.constexprs["HEAD_PAD"], dtype=torch.float32, device=q.device)
        ws_m = torch.empty(rows, dtype=torch.float32, device=q.device)
        ws_l = torch.empty_like(ws_m)
    else:
        ws_acc = ws_m = ws_l = ph
    sinks_arg = sinks if sinks is not None else ph
    args = {
        **main.args, "q_ptr": q, "k_ptr": k_cache, "v_ptr": v_cache, "out_ptr": out, "cu_q_ptr": cu_seqlens_q,
        "seqused_ptr": seqused_k, "bt_ptr": block_table,
        "alibi_ptr": alibi_slopes if alibi_slopes is not None else ph, "sinks_ptr": sinks_arg,
        "ws_acc_ptr": ws_acc, "ws_m_ptr": ws_m, "ws_l_ptr": ws_l,
        "scale": float(softmax_scale), "softcap": float(softcap), "window": left + 1,
    }  # fmt: skip
    if reduce is not None:
        reduce_args = {
            **reduce.args, "out_ptr": out, "ws_acc_ptr": ws_acc, "ws_m_ptr": ws_m, "ws_l_ptr": ws_l,
            "sinks_ptr": sinks_arg, "cu_q_ptr": cu_seqlens_q,
        }  # fmt: skip
    if not plan.shim:
        main.with_args(args).launch()
        if reduce is not None:
            reduce.with_args(reduce_args).launch()
        return out
    with bf16_shim() as shim:
        q_in, k_in, v_in, o = shim.input(q), shim.input(k_cache), shim.input(v_cache), shim.output(out)
        sinks_in = shim.input(sinks) if sinks is not None else ph
        args.update(q_ptr=q_in, k_ptr=k_in, v_ptr=v_in, out_ptr=o, sinks_ptr=sinks_in)
        args.update(
            _attention_static_args(q_in, k_in, v_in, o, block_table, num_seqs, num_tokens, plan.block_size)
        )
        main.with_args(args).launch()
        if reduce is not None:
            reduce_args.update(out_ptr=o, sinks_ptr=sinks_in, o_stride_t=o.stride(0), o_stride_h=o.stride(1))
            reduce.with_args(reduce_args).launch()
    return out
