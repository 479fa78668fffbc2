"""Multi-head latent attention (MLA, DeepSeek-V2/V3, Kimi-K2, GLM-5 class) for Triton-Ascend:
the latent KV-cache write, the decode over the latent cache and the prefill over decompressed K/V.

Semantics (vLLM 0.32's MLA path, `vllm/model_executor/layers/attention/mla_attention.py` and the
MLA backends in `vllm/v1/attention/backends/mla/`)
------------------------------------------------------------------------------------------------
`concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping)` (vLLM's `concat_and_cache_mla` with
`kv_cache_dtype="auto"`): one latent cache per layer, `kv_cache [num_blocks, block_size, L + R]`
(L = kv_lora_rank, R = qk_rope_head_dim; a strided view is fine as long as the row is dense).
Token `t < len(slot_mapping)` with `slot = slot_mapping[t]` writes `kv_c[t]` (`[L]`) then
`k_pe[t]` (`[R]`, or `[1, R]` as vLLM hands it) into `kv_cache[slot // block_size,
slot % block_size]`; slot -1 skips. Values are cast to the cache's dtype. Quantized (fp8) latent
caches are not covered.

`mla_decode(q, kv_cache, out, block_table, seq_lens, max_seq_len, softmax_scale, kv_lora_rank,
*, query_len=1, lse=None, num_kv_splits=None)`: MQA over the latent cache with the absorbed query
(vLLM's `forward_mqa`): q `[B * query_len, H, L + R]`, out `[B * query_len, H, L]`. Sequence `s`
owns query rows `s * query_len + i` (i < query_len: the speculative-decode case of a few tokens
per sequence, vLLM's uniform decode batches) and `seq_lens[s]` cached keys gathered through
`block_table[s]`; row i sits at position `seq_lens[s] - query_len + i` and sees keys up to it
(causal within the new tokens). score = softmax_scale * q . cache_row (all L + R dims); the
values are the latent part of the cache row. `lse` (optional, `[B * query_len, H]` fp32) gets the
natural-log log-sum-exp of the scores per row, as vLLM's decode backends return it.

`mla_prefill(q, k, v, out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
softmax_scale, causal, *, lse=None)`: ragged dense attention over decompressed heads (vLLM's MLA
prefill backends, `run_prefill_new_tokens` / `run_prefill_context_chunk`): q `[T, H, Dqk]`,
k `[Tk, H, Dqk]`, v `[Tk, H, Dv]` (DeepSeek-V3: Dqk 192 = nope 128 + rope 64, Dv 128), out
`[T, H, Dv]`; sequence s has queries `cu_seqlens_q[s]:cu_seqlens_q[s+1]` and keys
`cu_seqlens_k[s]:cu_seqlens_k[s+1]`. causal=True (new tokens) is bottom-right aligned: query i
sees keys `<= k_len - q_len + i`; causal=False (a context chunk) sees all of its sequence's keys.
`lse` (optional, `[H, T]` fp32, vLLM's layout for `merge_attn_states`) gets the natural-log
log-sum-exp; vLLM merges the new-token part and the context chunks with it.

Softmax and accumulation in fp32 for both attention kernels; P is cast to the data dtype for the
P.V product. A row that sees no key gets 0 and lse -inf (no weight in vLLM's merge). bf16 on the
interpreter goes through the runtime's bf16 shim (fp32 arithmetic on bf16 data).

Errors, limits and hostile input
--------------------------------
Static mistakes always raise before any launch: TypeError for dtypes and Python types, ValueError
for shapes, layouts and values; the limits live in `kernels/limits.py` (`MLA_*`: latent <= 512,
rope <= 128, prefill heads <= 256, cache block a multiple of 16, positions < 2^24, <= 64 splits,
query_len <= 16). Data-dependent checks (slot range, block ids and table coverage, sequence
lengths, cu_seqlens consistency) need the metadata on the host, a device sync on an NPU, so they
run only with input checks on (`VAT_CHECK_INPUTS`; default on for the interpreter, off on an NPU).
With checks off nothing outside the tensors is read or written, whatever the metadata:
`concat_and_cache_mla` skips a slot outside the cache; `mla_decode` masks a KV tile whose block id
is outside `[0, num_blocks)` and never looks up keys past the block table's width (a row that then
sees no key gets 0); `mla_prefill` never reads past `q`/`k`/`v` nor writes past `out`/`lse`
whatever `cu_seqlens_*` say (malformed ones give unspecified values inside `out`).

Ascend design
-------------
- `concat_and_cache_mla` is vector-only (`persistent_grid(tokens)`): per token one scalar slot
  load, then the latent and rope rows as two contiguous tiles into the cache row.
- `mla_decode` runs on the cube cores (`persistent_grid(work, uses_cube=True)`); a work item is
  (sequence, head group of `BLOCK_H` heads, KV segment, value chunk). All `query_len` tokens and
  the group's heads share one tile (`BLOCK_M = QL_PAD * BLOCK_H >= 16` rows, addressed through a
  3-D `[QL_PAD, BLOCK_H, dim]` view, affine per axis), so each KV tile is read once per group.
  The KV loop is tiled BY CACHE BLOCK (the walk is shared with attention: `kernels.paged`):
  `TILE_N` divides the block size, one scalar block id per tile, then contiguous `[TILE_N, ...]`
  tiles at a scalar int64 base (0 discrete accesses: the per-row lookup of GPU kernels
  scalarizes on the Ascend adapter). Scores are accumulated over
  the latent in `KC`-wide chunks plus the rope part (small live tiles); the P.V product uses the
  latent columns `[vc * DV, (vc + 1) * DV)` of the same cache rows, so the fp32 accumulator is
  `BLOCK_M x DV`: with L = 512 a full-width accumulator (32 KB fp32 at 16 rows, plus its rescaled
  copy and the product) does not fit the UB next to the K tiles, so `DV` is cut to fit
  (`decode_ub_estimate`; tuned-config keys `TILE_KC` and `DV`) and each value
  chunk is its own work item (the scores are recomputed per chunk: the price of fitting, paid
  in cube work and L2 reads, not in extra HBM traffic when the chunks of one group run
  concurrently).
- Split-KV: when the work items cannot fill the cube cores, each sequence's KV tiles are cut into
  `num_kv_splits` segments writing fp32 partials (acc, max, sum) to a workspace; a vector-core
  kernel merges them per (row, head) and writes out (and lse).
- `mla_prefill` (cube) tiles `BLOCK_Q` query tokens of one head per work item (query tiles are
  numbered without a host sync, `cu_seqlens_q[s] // BLOCK_Q + s`, found by a scalar binary
  search), KV tiles of `TILE_N` keys read as contiguous rows; the qk head is cut into a
  power-of-two part and the rest (192 = 128 + 64), so nothing is padded to 256.
- Masks compare positions in fp32 (Ascend vectorizes float compares); index math in int32 inside
  a tile, base addresses as scalar int64 products.
"""

from __future__ import annotations

import logging

import torch

# First: applies a requested backend (VAT_BACKEND=interpreter) before triton is imported.
from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  # isort: skip

import triton  # noqa: E402  # isort: skip

from vllm_ascend_triton.kernels import paged
from vllm_ascend_triton.kernels.limits import (
    MLA_MAX_KV_LORA_RANK,
    MLA_MAX_KV_SPLITS,
    MLA_MAX_POSITION,
    MLA_MAX_PREFILL_HEAD_SIZE,
    MLA_MAX_QUERY_LEN,
    MLA_MAX_ROPE_DIM,
    MLA_MIN_BLOCK_SIZE_MULTIPLE,
)
from vllm_ascend_triton.kernels.mla._kernels import (
    _concat_and_cache_mla_kernel,
    _mla_decode_kernel,
    _mla_decode_reduce_kernel,
    _mla_prefill_kernel,
)
from vllm_ascend_triton.kernels.mla.reference import (
    concat_and_cache_mla_reference,
    make_latent_case,
    mla_decode_reference,
    mla_prefill_reference,
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
from vllm_ascend_triton.runtime.ub import dtype_bytes, ub_budget_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "concat_and_cache_mla",
    "mla_decode",
    "mla_prefill",
    "concat_and_cache_mla_reference",
    "mla_decode_reference",
    "mla_prefill_reference",
    "make_latent_case",
    "decode_ub_estimate",
    "prefill_ub_estimate",
]

_MIN_ROWS = 16  # cube fractal: fewer rows waste the same cube pass anyway
_MIN_DOT = 16  # tl.dot wants every tile axis >= 16
_MAX_KC = 128
# Launch plans per call shape (static checks passed, configs, templates): computed once.
_PLANS = ShapeCache("mla")


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


# ----------------------------------------------------------------------------------------------
# UB model and configs
# ----------------------------------------------------------------------------------------------


def decode_ub_estimate(block_m: int, tile_n: int, kc: int, dv: int, rope_pad: int, elem_bytes: int) -> int:
    """Bytes of one decode program's live tiles (modelled): the q chunk and q rope, the K chunk,
    K rope and V chunk tiles in the data dtype; S, P and the accumulator (with its rescaled copy
    and the P.V product) in fp32."""
    data = elem_bytes * (block_m * (kc + rope_pad) + tile_n * (kc + rope_pad + dv))
    return data + 4 * (2 * block_m * tile_n + 3 * block_m * dv)


def prefill_ub_estimate(block_q: int, tile_n: int, qk_pad: int, dv_pad: int, elem_bytes: int) -> int:
    """Bytes of one prefill program's live tiles (modelled): Q, K, V in the data dtype; S, P and
    the accumulator (rescaled copy, P.V product) in fp32."""
    data = elem_bytes * (block_q * qk_pad + tile_n * (qk_pad + dv_pad))
    return data + 4 * (2 * block_q * tile_n + 3 * block_q * dv_pad)


def _check_pow2(kernel: str, sku: str, name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value & (value - 1):
        raise ValueError(f"{kernel} config for {sku} needs a power-of-two {name} >= {minimum}, got {value!r}")
    return value


def _decode_config(
    sku: str, lora: int, rope: int, block_size: int, dtype: torch.dtype, query_len: int, num_heads: int
) -> dict:
    lora_pad, rope_pad, ql_pad = max(_MIN_DOT, _pow2(lora)), max(_MIN_DOT, _pow2(rope)), _pow2(query_len)
    eb = dtype_bytes(dtype)
    with plan_for(sku) as dev:
        budget = ub_budget_bytes(dev)
    block_h = max(1, _MIN_ROWS // ql_pad)
    block_m = ql_pad * block_h
    kc = min(lora_pad, _MAX_KC)
    tile_max = min(paged.largest_pow2_divisor(block_size), 64)
    default = None
    dv = lora_pad
    # Widest value chunk first (each extra chunk recomputes the scores), then the widest KV tile.
    while default is None:
        tile_n = tile_max
        while tile_n >= _MIN_DOT:
            if decode_ub_estimate(block_m, tile_n, kc, dv, rope_pad, eb) <= budget or (
                dv <= _MIN_DOT and tile_n == _MIN_DOT
            ):
                # DV is deliberately not a TILE_* key: vat tune's generic space would search it and
                # its roofline model, blind to the score recomputation per value chunk, shrinks it.
                default = {"BLOCK_H": block_h, "TILE_N": tile_n, "TILE_KC": kc, "DV": dv}
                break
            tile_n //= 2
        dv //= 2
    key = {
        "kv_lora_rank": lora,
        "rope_dim": rope,
        "block_size": block_size,
        "query_len": query_len,
        "dtype": dtype_key(dtype),
    }
    cfg = lookup_config(sku, "mla_decode", key, default)
    block_h = _check_pow2("mla_decode", sku, "BLOCK_H", cfg.get("BLOCK_H"))
    tile_n = _check_pow2("mla_decode", sku, "TILE_N", cfg.get("TILE_N"), _MIN_DOT)
    kc = _check_pow2("mla_decode", sku, "TILE_KC", cfg.get("TILE_KC"), _MIN_DOT)
    dv = _check_pow2("mla_decode", sku, "DV", cfg.get("DV"), _MIN_DOT)
    # The nearest tuned entry may come from another shape: keep every tile legal for this one.
    if block_size % tile_n:
        tile_n = paged.largest_pow2_divisor(block_size)
    kc, dv = min(kc, lora_pad), min(dv, lora_pad)
    block_h = max(block_h, _MIN_ROWS // ql_pad)
    # Never more heads per tile than the layer has (past the minimum rows the cube wants).
    block_h = max(min(block_h, _pow2(num_heads)), max(1, _MIN_ROWS // ql_pad))
    return {
        "BLOCK_H": block_h,
        "BLOCK_M": block_h * ql_pad,
        "TILE_N": tile_n,
        "KC": kc,
        "DV": dv,
        "LORA_PAD": lora_pad,
        "ROPE_PAD": rope_pad,
        "QL_PAD": ql_pad,
    }


def _prefill_config(sku: str, qk_head: int, v_head: int, dtype: torch.dtype, causal: bool) -> dict:
    da = 1 << (qk_head.bit_length() - 1)
    db = qk_head - da
    db_pad = max(_MIN_DOT, _pow2(db)) if db else _MIN_DOT
    dv_pad = max(_MIN_DOT, _pow2(v_head))
    eb = dtype_bytes(dtype)
    with plan_for(sku) as dev:
        budget = ub_budget_bytes(dev)
    default = {"BLOCK_Q": _MIN_ROWS, "TILE_N": _MIN_DOT}
    for block_q, tile_n in ((64, 64), (32, 64), (32, 32), (16, 64), (16, 32), (16, 16)):
        if prefill_ub_estimate(block_q, tile_n, da + db_pad, dv_pad, eb) <= budget:
            default = {"BLOCK_Q": block_q, "TILE_N": tile_n}
            break
    key = {"qk_head_size": qk_head, "v_head_size": v_head, "dtype": dtype_key(dtype), "causal": causal}
    cfg = lookup_config(sku, "mla_prefill", key, default)
    block_q = _check_pow2("mla_prefill", sku, "BLOCK_Q", cfg.get("BLOCK_Q"), _MIN_DOT)
    tile_n = _check_pow2("mla_prefill", sku, "TILE_N", cfg.get("TILE_N"), _MIN_DOT)
    return {"BLOCK_Q": block_q, "TILE_N": tile_n, "DA": da, "DB": db, "DB_PAD": db_pad, "DV_PAD": dv_pad}


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def _latent_view(kv_cache: object) -> object:
    """vLLM's Triton MLA path views the cache with a head axis of 1: take it as the 3-D cache
    (the view starts at the same address, so launches may pass either)."""
    if isinstance(kv_cache, torch.Tensor) and kv_cache.dim() == 4 and kv_cache.shape[2] == 1:
        return kv_cache[:, :, 0]
    return kv_cache


def _check_cache(kv_cache: torch.Tensor) -> tuple[int, int, int]:
    check_tensor("kv_cache", kv_cache, dtypes=FLOAT_DTYPES, ndim=3)
    check_last_dim_contiguous("kv_cache", kv_cache)
    num_blocks, block_size, dim = kv_cache.shape
    if block_size < 1 or block_size % MLA_MIN_BLOCK_SIZE_MULTIPLE:
        raise ValueError(
            f"kv_cache block_size must be a multiple of {MLA_MIN_BLOCK_SIZE_MULTIPLE}, got {block_size}"
        )
    return num_blocks, block_size, dim


def _check_latent_dims(lora: int, rope: int) -> None:
    if not 1 <= lora <= MLA_MAX_KV_LORA_RANK:
        raise ValueError(f"kv_lora_rank must be in [1, {MLA_MAX_KV_LORA_RANK}], got {lora}")
    if not 1 <= rope <= MLA_MAX_ROPE_DIM:
        raise ValueError(f"the rope part of the latent must be in [1, {MLA_MAX_ROPE_DIM}] dims, got {rope}")


# ----------------------------------------------------------------------------------------------
# concat_and_cache_mla
# ----------------------------------------------------------------------------------------------


def _plan_cache_write(kv_c, k_pe, kv_cache, slot_mapping) -> paged.Plan:
    """Static checks and the launch template of a `concat_and_cache_mla` call shape."""
    view = _latent_view(kv_cache)
    check_tensor("kv_c", kv_c, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("k_pe", k_pe, dtypes=FLOAT_DTYPES, ndim=(2, 3))
    check_tensor("slot_mapping", slot_mapping, dtypes=INDEX_DTYPES, ndim=1)
    num_blocks, block_size, dim = _check_cache(view)
    check_same_device(kv_c=kv_c, k_pe=k_pe, kv_cache=view, slot_mapping=slot_mapping)
    paged.check_dense_vector("slot_mapping", slot_mapping)
    if k_pe.dim() == 3:
        if k_pe.shape[1] != 1:
            raise ValueError(f"k_pe must be [tokens, R] or [tokens, 1, R], got {tuple(k_pe.shape)}")
        k_pe = k_pe[:, 0]
    lora, rope = kv_c.shape[1], k_pe.shape[1]
    _check_latent_dims(lora, rope)
    if lora + rope != dim:
        raise ValueError(
            f"kv_cache rows must hold kv_c ({lora}) + k_pe ({rope}) = {lora + rope} dims, got {dim}"
        )
    check_last_dim_contiguous("kv_c", kv_c)
    check_last_dim_contiguous("k_pe", k_pe)
    n = slot_mapping.shape[0]
    if kv_c.shape[0] < n or k_pe.shape[0] < n:
        raise ValueError(
            f"kv_c/k_pe need at least len(slot_mapping)={n} rows, got {kv_c.shape[0]} and {k_pe.shape[0]}"
        )
    plan = paged.Plan(n=n, num_slots=num_blocks * block_size, shim=kv_c.dtype is torch.bfloat16 or
                 k_pe.dtype is torch.bfloat16 or view.dtype is torch.bfloat16)  # fmt: skip
    if n:
        ph = paged.dummy(kv_c.device)
        plan.template = LaunchSpec(
            "concat_and_cache_mla", _concat_and_cache_mla_kernel, persistent_grid(n, device=current_device()),
            _cache_write_args(ph, ph, ph, ph, n, kv_c, k_pe, view, block_size, plan.num_slots),
            dict(LORA=lora, LORA_PAD=_pow2(lora), ROPE=rope, ROPE_PAD=_pow2(rope)), {},
        )  # fmt: skip
    return plan


def _cache_write_args(kvc_ptr, kpe_ptr, cache_ptr, slot_ptr, n, kv_c, k_pe, cache, block_size, num_slots):
    """Runtime arguments of the cache write; strides are read from the tensors the kernel gets."""
    return dict(
        kvc_ptr=kvc_ptr, kpe_ptr=kpe_ptr, cache_ptr=cache_ptr, slot_ptr=slot_ptr, num_tokens=n,
        block_size=block_size, num_slots=num_slots, kvc_stride_t=kv_c.stride(0), kpe_stride_t=k_pe.stride(0),
        c_stride_b=cache.stride(0), c_stride_s=cache.stride(1),
    )  # fmt: skip


def concat_and_cache_mla(
    kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write `[kv_c | k_pe]` rows into the paged latent cache at `slot_mapping` (slot -1 = skip).

    Args:
        kv_c: `[tokens, L]` normalized latent (rows may be strided; the last dim dense).
        k_pe: `[tokens, R]` or `[tokens, 1, R]` rope keys.
        kv_cache: `[num_blocks, block_size, L + R]` (or `[.., .., 1, L + R]`), block size a
            multiple of 16.
        slot_mapping: `[n]` int32/int64, `n <= tokens`; -1 skips a token.

    Returns:
        None (the cache is written in place).

    Raises:
        TypeError: a non-tensor or a dtype outside fp16/bf16/fp32 (data), int32/int64 (slots).
        ValueError: shapes that do not match, a non-dense last dim, dims past `kernels.limits`,
            and (input checks on) a slot outside `[-1, num_blocks * block_size)`.
    """
    plan = paged.cache_write_plan(_PLANS, _plan_cache_write, (kv_c, k_pe, kv_cache, slot_mapping))
    if plan is None:
        return
    n = plan.n
    template = plan.template
    if not plan.shim:
        # The kernel reads rows [0, n) only and a [T, 1, R] k_pe or a [.., .., 1, L + R] cache
        # starts where its squeezed view does: the caller's tensors go in as they are.
        template.with_args(
            {
                **template.args,
                "kvc_ptr": kv_c,
                "kpe_ptr": k_pe,
                "cache_ptr": kv_cache,
                "slot_ptr": slot_mapping,
            }
        ).launch()
        return
    if k_pe.dim() == 3:
        k_pe = k_pe[:, 0]
    c = template.args
    with bf16_shim() as shim:
        kvc_in, kpe_in = shim.input(kv_c[:n]), shim.input(k_pe[:n])
        cache = shim.output(_latent_view(kv_cache))
        args = _cache_write_args(
            kvc_in, kpe_in, cache, slot_mapping, n, kvc_in, kpe_in, cache, c["block_size"], c["num_slots"]
        )
        template.with_args(args).launch()


# ----------------------------------------------------------------------------------------------
# mla_decode
# ----------------------------------------------------------------------------------------------


def _validate_decode(
    q, kv_cache, out, block_table, seq_lens, kv_lora_rank, query_len, lse
) -> tuple[int, int]:
    """Static checks of a decode call shape (tensors and the plan-deciding ints); returns
    (num_seqs, block_size)."""
    check_tensor("q", q, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("out", out, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor("block_table", block_table, dtypes=INDEX_DTYPES, ndim=2)
    check_tensor("seq_lens", seq_lens, dtypes=INDEX_DTYPES, ndim=1)
    if lse is not None:
        check_tensor("lse", lse, dtypes=(torch.float32,), ndim=2)
    num_blocks, block_size, dim = _check_cache(kv_cache)
    check_same_device(q=q, kv_cache=kv_cache, out=out, block_table=block_table, seq_lens=seq_lens, lse=lse)
    if kv_cache.dtype != q.dtype or out.dtype != q.dtype:
        raise TypeError(
            f"kv_cache and out must have q's dtype {q.dtype}, got {kv_cache.dtype} and {out.dtype}"
        )
    check_positive_int("kv_lora_rank", kv_lora_rank)
    check_positive_int("query_len", query_len)
    if query_len > MLA_MAX_QUERY_LEN:
        raise ValueError(f"query_len must be <= {MLA_MAX_QUERY_LEN}, got {query_len}")
    _check_latent_dims(kv_lora_rank, dim - kv_lora_rank)
    rows, num_heads, q_dim = q.shape
    if q_dim != dim:
        raise ValueError(f"q's last dim must be the cache row ({dim} = latent + rope), got {q_dim}")
    if tuple(out.shape) != (rows, num_heads, kv_lora_rank):
        raise ValueError(f"out must be {(rows, num_heads, kv_lora_rank)}, got {tuple(out.shape)}")
    if lse is not None and (tuple(lse.shape) != (rows, num_heads) or not lse.is_contiguous()):
        raise ValueError(f"lse must be a contiguous {(rows, num_heads)} tensor, got {tuple(lse.shape)}")
    num_seqs = seq_lens.shape[0]
    if rows != num_seqs * query_len:
        raise ValueError(f"q must have len(seq_lens) * query_len = {num_seqs * query_len} rows, got {rows}")
    paged.check_block_table(block_table, num_seqs)
    paged.check_dense_vector("seq_lens", seq_lens)
    for name, t in (("q", q), ("out", out)):
        check_last_dim_contiguous(name, t)
    return num_seqs, block_size


def _check_decode_scalars(max_seq_len: object, softmax_scale: object, splits: object) -> None:
    """Per-call checks of the host values that may change between calls of one shape."""
    check_positive_int("max_seq_len", max_seq_len, minimum=0)
    if max_seq_len >= MLA_MAX_POSITION:
        raise ValueError(f"max_seq_len must be < {MLA_MAX_POSITION} (positions are compared in fp32)")
    paged.check_float("softmax_scale", softmax_scale)
    if splits is not None:
        check_positive_int("num_kv_splits", splits)
        if splits > MLA_MAX_KV_SPLITS:
            raise ValueError(f"num_kv_splits must be <= {MLA_MAX_KV_SPLITS}, got {splits}")


def _check_decode_values(seq_lens, query_len, max_seq_len, block_table, block_size, num_blocks) -> None:
    """Data checks (input checks on): lengths against query_len, max_seq_len and the block table."""
    used = seq_lens.tolist()
    if min(used) < query_len:
        s = min(range(len(used)), key=lambda i: used[i])
        raise ValueError(f"seq_lens[{s}]={used[s]} is smaller than query_len={query_len}")
    if max(used) > max_seq_len:
        raise ValueError(f"a seq_lens value ({max(used)}) exceeds max_seq_len={max_seq_len}")
    paged.check_block_table_values("seq_lens", used, block_table, block_size, num_blocks)


def _plan_decode(q, kv_cache, out, block_table, seq_lens, lse, kv_lora_rank, query_len) -> paged.Plan:
    """Static checks, config and unsplit facts of a decode call shape."""
    view = _latent_view(kv_cache)
    num_seqs, block_size = _validate_decode(q, view, out, block_table, seq_lens, kv_lora_rank, query_len, lse)
    rows, num_heads, dim = q.shape
    plan = paged.Plan(num_seqs=num_seqs, block_size=block_size, num_blocks=view.shape[0], rows=rows,
                 shim=q.dtype is torch.bfloat16, launches={})  # fmt: skip
    if rows == 0 or num_seqs == 0:
        return plan
    device = current_device()
    rope = dim - kv_lora_rank
    cfg = _decode_config(device.sku.name, kv_lora_rank, rope, block_size, q.dtype, query_len, num_heads)
    ph = paged.dummy(q.device)
    plan.__dict__.update(
        device=device, cfg=cfg, placeholder=ph, num_heads=num_heads, lora=kv_lora_rank, rope=rope,
        query_len=query_len, write_lse=lse is not None,
        work=num_seqs * -(-num_heads // cfg["BLOCK_H"]) * (cfg["LORA_PAD"] // cfg["DV"]),
        static=_decode_static_args(q, view, out, block_table, num_seqs, num_heads, block_size),
    )  # fmt: skip
    return plan


def _decode_static_args(q, cache, out, block_table, num_seqs, num_heads, block_size) -> dict:
    """Runtime arguments of the decode kernel that depend only on shapes and strides (read from
    the tensors the kernel gets)."""
    return dict(
        num_seqs=num_seqs, num_heads=num_heads, num_blocks=cache.shape[0],
        max_keys=block_table.shape[1] * block_size,
        q_stride_t=q.stride(0), q_stride_h=q.stride(1), o_stride_t=out.stride(0), o_stride_h=out.stride(1),
        c_stride_b=cache.stride(0), c_stride_s=cache.stride(1), bt_stride=block_table.stride(0),
    )  # fmt: skip


def _decode_templates(plan: paged.Plan, splits: int) -> tuple[LaunchSpec, LaunchSpec | None]:
    """The decode (and, when split, reduce) launch templates of a plan for a split count."""
    templates = plan.launches.get(splits)
    if templates is not None:
        return templates
    cfg, ph, split = plan.cfg, plan.placeholder, splits > 1
    tensors = ("q_ptr", "cache_ptr", "out_ptr", "lse_ptr", "bt_ptr", "seqlens_ptr", "ws_acc_ptr", "ws_m_ptr",
               "ws_l_ptr")  # fmt: skip
    main = LaunchSpec(
        "mla_decode", _mla_decode_kernel,
        persistent_grid(plan.work * splits, uses_cube=True, device=plan.device),
        {**dict.fromkeys(tensors, ph), **plan.static, "num_segments": splits, "scale": 1.0},
        dict(
            LORA=plan.lora, LORA_PAD=cfg["LORA_PAD"], ROPE=plan.rope, ROPE_PAD=cfg["ROPE_PAD"], KC=cfg["KC"],
            DV=cfg["DV"], QL=plan.query_len, QL_PAD=cfg["QL_PAD"], BLOCK_H=cfg["BLOCK_H"],
            BLOCK_M=cfg["BLOCK_M"], BLOCK_SIZE=plan.block_size, TILE_N=cfg["TILE_N"], SPLIT=split,
            WRITE_LSE=plan.write_lse,
        ),
        {"BLOCK_H": cfg["BLOCK_H"], "TILE_N": cfg["TILE_N"], "TILE_KC": cfg["KC"], "DV": cfg["DV"]},
        uses_cube=True,
    )  # fmt: skip
    reduce = None
    if split:
        reduce = LaunchSpec(
            "mla_decode_reduce", _mla_decode_reduce_kernel,
            persistent_grid(plan.rows * plan.num_heads, device=plan.device),
            dict(
                out_ptr=ph, lse_ptr=ph, ws_acc_ptr=ph, ws_m_ptr=ph, ws_l_ptr=ph, num_rows=plan.rows,
                num_heads=plan.num_heads, num_segments=splits, o_stride_t=plan.static["o_stride_t"],
                o_stride_h=plan.static["o_stride_h"],
            ),
            dict(LORA=plan.lora, LORA_PAD=cfg["LORA_PAD"], SEG_PAD=_pow2(splits), WRITE_LSE=plan.write_lse),
            {"num_kv_splits": splits},
        )  # fmt: skip
    templates = plan.launches[splits] = (main, reduce)
    return templates


def mla_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    softmax_scale: float,
    kv_lora_rank: int,
    *,
    query_len: int = 1,
    lse: torch.Tensor | None = None,
    num_kv_splits: int | None = None,
) -> torch.Tensor:
    """MQA over the paged latent cache (vLLM's MLA `forward_mqa`); writes and returns `out`.

    Args:
        q: `[B * query_len, H, L + R]` absorbed queries (latent part, then rope part).
        kv_cache: `[num_blocks, block_size, L + R]` (or `[.., .., 1, L + R]`) latent cache
            (q's dtype).
        out: `[B * query_len, H, L]` (q's dtype), written.
        block_table: `[>= B, max_blocks]` int32/int64 cache block ids per sequence.
        seq_lens: `[B]` int32/int64 cached keys per sequence (the new tokens included).
        max_seq_len: an upper bound of `seq_lens` (host int; decides split-KV, no device sync).
        softmax_scale: score scale.
        kv_lora_rank: L, the latent width (the value part of the cache row).
        query_len: query tokens per sequence (1 = decode; more = speculative decode, causal).
        lse: optional `[B * query_len, H]` fp32, written with the natural-log log-sum-exp.
        num_kv_splits: None = the wrapper decides; 1 = never split; n > 1 forces n segments.

    Returns:
        `out`.

    Raises:
        TypeError: non-tensors, wrong dtypes, non-number scale.
        ValueError: shapes, layouts, limits of `kernels.limits` and (input checks on) metadata
            values outside what the cache and block table hold.
    """
    plan = paged.plan_call(
        _PLANS,
        "decode",
        _plan_decode,
        (q, kv_cache, out, block_table, seq_lens, lse),
        (kv_lora_rank, query_len),
    )
    _check_decode_scalars(max_seq_len, softmax_scale, num_kv_splits)
    num_seqs = plan.num_seqs
    if checks_enabled() and num_seqs:
        _check_decode_values(seq_lens, query_len, max_seq_len, block_table, plan.block_size, plan.num_blocks)
    if plan.rows == 0 or num_seqs == 0:
        return out
    # The split count follows max_seq_len (a host value that may change between graph replays);
    # the kernel derives each segment from seq_lens on the device, so any count is correct.
    splits = num_kv_splits
    if splits is None:
        splits = paged.choose_splits(plan.work, max_seq_len, plan.cfg["TILE_N"], plan.device.cube_cores)
    main, reduce = _decode_templates(plan, splits)
    if splits > 1:
        n = plan.rows * plan.num_heads * splits
        ws_m = torch.empty(n, dtype=torch.float32, device=q.device)
        ws_l = torch.empty_like(ws_m)
        ws_acc = torch.empty(n * plan.cfg["LORA_PAD"], dtype=torch.float32, device=q.device)
    else:
        ws_acc = ws_m = ws_l = plan.placeholder
    lse_arg = lse if lse is not None else plan.placeholder
    # A [.., .., 1, L + R] cache starts where its 3-D view does: it goes in as it is.
    args = {**main.args, "q_ptr": q, "cache_ptr": kv_cache, "out_ptr": out, "lse_ptr": lse_arg,
            "bt_ptr": block_table, "seqlens_ptr": seq_lens, "ws_acc_ptr": ws_acc, "ws_m_ptr": ws_m,
            "ws_l_ptr": ws_l, "scale": float(softmax_scale)}  # fmt: skip
    if reduce is not None:
        reduce_args = {**reduce.args, "out_ptr": out, "lse_ptr": lse_arg, "ws_acc_ptr": ws_acc,
                       "ws_m_ptr": ws_m, "ws_l_ptr": ws_l}  # fmt: skip
    if not plan.shim:
        main.with_args(args).launch()
        if reduce is not None:
            reduce.with_args(reduce_args).launch()
        return out
    with bf16_shim() as shim:
        q_in, c_in, o = shim.input(q), shim.input(_latent_view(kv_cache)), shim.output(out)
        args.update(q_ptr=q_in, cache_ptr=c_in, out_ptr=o)
        args.update(
            _decode_static_args(q_in, c_in, o, block_table, num_seqs, plan.num_heads, plan.block_size)
        )
        main.with_args(args).launch()
        if reduce is not None:
            reduce_args.update(out_ptr=o, o_stride_t=o.stride(0), o_stride_h=o.stride(1))
            reduce.with_args(reduce_args).launch()
    return out


# ----------------------------------------------------------------------------------------------
# mla_prefill
# ----------------------------------------------------------------------------------------------


def _validate_prefill(q, k, v, out, cu_q, cu_k, causal, lse) -> int:
    """Static checks of a prefill call shape; returns the number of sequences."""
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES, ndim=3)
        check_last_dim_contiguous(name, t)
    check_tensor("cu_seqlens_q", cu_q, dtypes=INDEX_DTYPES, ndim=1)
    check_tensor("cu_seqlens_k", cu_k, dtypes=INDEX_DTYPES, ndim=1)
    if lse is not None:
        check_tensor("lse", lse, dtypes=(torch.float32,), ndim=2)
    check_same_device(q=q, k=k, v=v, out=out, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, lse=lse)
    if k.dtype != q.dtype or v.dtype != q.dtype or out.dtype != q.dtype:
        raise TypeError(f"k, v and out must have q's dtype {q.dtype}, got {k.dtype}, {v.dtype}, {out.dtype}")
    num_tokens, num_heads, qk_head = q.shape
    if k.shape[1:] != (num_heads, qk_head):
        raise ValueError(f"k must be [keys, {num_heads}, {qk_head}] like q, got {tuple(k.shape)}")
    if v.shape[0] != k.shape[0] or v.shape[1] != num_heads:
        raise ValueError(f"v must be [{k.shape[0]}, {num_heads}, Dv] like k, got {tuple(v.shape)}")
    v_head = v.shape[2]
    for name, d in (("q/k head size", qk_head), ("v head size", v_head)):
        if not 1 <= d <= MLA_MAX_PREFILL_HEAD_SIZE:
            raise ValueError(f"{name} must be in [1, {MLA_MAX_PREFILL_HEAD_SIZE}], got {d}")
    if tuple(out.shape) != (num_tokens, num_heads, v_head):
        raise ValueError(f"out must be {(num_tokens, num_heads, v_head)}, got {tuple(out.shape)}")
    if lse is not None and (tuple(lse.shape) != (num_heads, num_tokens) or lse.stride(1) != 1):
        raise ValueError(
            f"lse must be [{num_heads}, {num_tokens}] (heads first, vLLM's layout) with dense rows, "
            f"got {tuple(lse.shape)} strides {tuple(lse.stride())}"
        )
    num_seqs = cu_q.shape[0] - 1
    if num_seqs < 0 or cu_k.shape[0] != cu_q.shape[0]:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must both have num_seqs + 1 >= 1 entries, got "
            f"{cu_q.shape[0]} and {cu_k.shape[0]}"
        )
    paged.check_dense_vector("cu_seqlens_q", cu_q)
    paged.check_dense_vector("cu_seqlens_k", cu_k)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    return num_seqs


def _check_prefill_scalars(max_seqlen_q: object, max_seqlen_k: object, softmax_scale: object) -> None:
    check_positive_int("max_seqlen_q", max_seqlen_q, minimum=0)
    check_positive_int("max_seqlen_k", max_seqlen_k, minimum=0)
    if max_seqlen_k >= MLA_MAX_POSITION:
        raise ValueError(f"max_seqlen_k must be < {MLA_MAX_POSITION} (positions are compared in fp32)")
    paged.check_float("softmax_scale", softmax_scale)


def _check_prefill_values(cu_q, cu_k, num_tokens, num_keys, max_seqlen_q, max_seqlen_k, causal) -> None:
    """Data checks (input checks on): both offset vectors, and keys >= queries when causal."""
    ql = paged.check_cu_seqlens("cu_seqlens_q", cu_q.tolist(), num_tokens, "max_seqlen_q", max_seqlen_q)
    kl = paged.check_cu_seqlens("cu_seqlens_k", cu_k.tolist(), num_keys, "max_seqlen_k", max_seqlen_k)
    if causal:
        bad = [s for s in range(len(ql)) if kl[s] < ql[s]]
        if bad:
            s = bad[0]
            raise ValueError(f"causal: sequence {s} has {kl[s]} keys for {ql[s]} queries (needs >=)")


def _plan_prefill(q, k, v, out, cu_q, cu_k, lse, causal) -> paged.Plan:
    num_seqs = _validate_prefill(q, k, v, out, cu_q, cu_k, causal, lse)
    num_tokens, num_heads, qk_head = q.shape
    plan = paged.Plan(num_seqs=num_seqs, num_tokens=num_tokens, shim=q.dtype is torch.bfloat16)
    if num_tokens == 0 or num_seqs == 0:
        return plan
    device = current_device()
    cfg = _prefill_config(device.sku.name, qk_head, v.shape[2], q.dtype, causal)
    num_q_tiles = num_tokens // cfg["BLOCK_Q"] + num_seqs
    ph = paged.dummy(q.device)
    tensors = ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "lse_ptr", "cu_q_ptr", "cu_k_ptr")
    plan.placeholder = ph
    plan.template = LaunchSpec(
        "mla_prefill", _mla_prefill_kernel,
        persistent_grid(num_q_tiles * num_heads, uses_cube=True, device=device),
        {
            **dict.fromkeys(tensors, ph), "num_seqs": num_seqs, "num_q_tiles": num_q_tiles,
            "num_heads": num_heads, "num_tokens": num_tokens, "num_keys": k.shape[0],
            **_prefill_strides(q, k, v, out), "lse_stride_h": lse.stride(0) if lse is not None else 0,
            "scale": 1.0,
        },
        dict(
            DA=cfg["DA"], DB=cfg["DB"], DB_PAD=cfg["DB_PAD"], DV=v.shape[2], DV_PAD=cfg["DV_PAD"],
            BLOCK_Q=cfg["BLOCK_Q"], TILE_N=cfg["TILE_N"], CAUSAL=causal, WRITE_LSE=lse is not None,
        ),
        {"BLOCK_Q": cfg["BLOCK_Q"], "TILE_N": cfg["TILE_N"]},
        uses_cube=True,
    )  # fmt: skip
    return plan


def _prefill_strides(q, k, v, out) -> dict:
    return dict(
        q_stride_t=q.stride(0), q_stride_h=q.stride(1), k_stride_t=k.stride(0), k_stride_h=k.stride(1),
        v_stride_t=v.stride(0), v_stride_h=v.stride(1), o_stride_t=out.stride(0), o_stride_h=out.stride(1),
    )  # fmt: skip


def mla_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
    *,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ragged dense attention with different qk and v head sizes (vLLM's MLA prefill); writes and
    returns `out`.

    Args:
        q: `[T, H, Dqk]` queries.
        k: `[Tk, H, Dqk]` keys; v: `[Tk, H, Dv]` values (strided rows fine, last dims dense).
        out: `[T, H, Dv]` (q's dtype), written for every row some sequence owns.
        cu_seqlens_q / cu_seqlens_k: `[num_seqs + 1]` int32/int64 row offsets.
        max_seqlen_q / max_seqlen_k: upper bounds of the lengths (host ints).
        softmax_scale: score scale.
        causal: bottom-right aligned causal mask (new tokens), or none (a context chunk).
        lse: optional `[H, T]` fp32 (rows dense), written with the natural-log log-sum-exp.

    Returns:
        `out`.

    Raises:
        TypeError: non-tensors, wrong dtypes, a non-bool `causal`.
        ValueError: shapes, layouts, limits of `kernels.limits` and (input checks on) offsets
            that are not consistent with the tensors.
    """
    plan = paged.plan_call(
        _PLANS, "prefill", _plan_prefill, (q, k, v, out, cu_seqlens_q, cu_seqlens_k, lse), (causal,)
    )
    _check_prefill_scalars(max_seqlen_q, max_seqlen_k, softmax_scale)
    if checks_enabled() and plan.num_seqs > 0:
        _check_prefill_values(
            cu_seqlens_q, cu_seqlens_k, plan.num_tokens, k.shape[0], max_seqlen_q, max_seqlen_k, causal
        )
    if plan.num_tokens == 0 or plan.num_seqs == 0 or max_seqlen_q == 0:
        return out
    template = plan.template
    lse_arg = lse if lse is not None else plan.placeholder
    args = {**template.args, "q_ptr": q, "k_ptr": k, "v_ptr": v, "out_ptr": out, "lse_ptr": lse_arg,
            "cu_q_ptr": cu_seqlens_q, "cu_k_ptr": cu_seqlens_k, "scale": float(softmax_scale)}  # fmt: skip
    if not plan.shim:
        template.with_args(args).launch()
        return out
    with bf16_shim() as shim:
        q_in, k_in, v_in, o = shim.input(q), shim.input(k), shim.input(v), shim.output(out)
        args.update(q_ptr=q_in, k_ptr=k_in, v_ptr=v_in, out_ptr=o, **_prefill_strides(q_in, k_in, v_in, o))
        template.with_args(args).launch()
    return out
