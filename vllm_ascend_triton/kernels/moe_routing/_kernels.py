"""The @triton.jit bodies of the moe_routing family (design notes: the package docstring)."""

import triton
import triton.language as tl

from vllm_ascend_triton.kernels.moe_sort.jit import bin_layout
from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)

_NEG_INF = tl.constexpr(float("-inf"))  # marks "not selectable" in the top-k kernel


@triton.jit
def _finite(x):
    # NaN -> -FLT_MAX, +-inf -> +-FLT_MAX: keys stay finite so that -inf can mean "not selectable".
    x = tl.where(x != x, -3.4028234663852886e38, x)
    return tl.minimum(tl.maximum(x, -3.4028234663852886e38), 3.4028234663852886e38)


@triton.jit
def _first_max(key):
    """Per row: (max, one-hot of the lowest lane holding it). The one-hot comes from a running
    count of the max lanes (an fp32 cumsum, exact), not from a second min-reduction."""
    best = tl.max(key, axis=1)
    is_best = key == best[:, None]
    seen = tl.cumsum(tl.where(is_best, 1.0, 0.0), axis=1)
    return best, is_best & (seen == 1.0)


@triton.jit
def _topk_routing_kernel(
    logits_ptr,
    bias_ptr,
    weights_ptr,
    ids_ptr,
    num_rows,
    num_experts,
    logits_row_stride,
    group_size,
    routed_scaling_factor,
    TOPK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    SIGMOID: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    NUM_GROUPS: tl.constexpr,
    TOPK_GROUP: tl.constexpr,
):
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < num_experts
    lane = offs_e.to(tl.float32)  # fp32 lane ids: compares stay vector ops (exact below 2^24)
    col = tl.arange(0, BLOCK_K).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)
    if NUM_GROUPS > 1:
        group_of = (offs_e // group_size).to(tl.float32)

    num_tiles = tl.cdiv(num_rows, BLOCK_M)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        row0 = tile * BLOCK_M
        tile_rows = tl.arange(0, BLOCK_M)
        row_ok = row0 + tile_rows < num_rows
        mask = row_ok[:, None] & e_ok[None, :]
        # The tile's base offset is a scalar int64 product (rows x stride may pass 2^31); offsets
        # inside the tile stay int32 vectors.
        tile_logits = logits_ptr + tl.cast(row0, tl.int64) * logits_row_stride
        x = tl.load(
            tile_logits + tile_rows[:, None] * logits_row_stride + offs_e[None, :], mask=mask, other=0.0
        )
        x = _finite(x.to(tl.float32))
        if SIGMOID:
            score = 1.0 / (1.0 + tl.exp(-x))
        else:
            # Padded expert lanes are -inf so they add exp(-inf) = 0; padded rows stay finite.
            xm = tl.where(e_ok[None, :], x, _NEG_INF)
            p = tl.exp(xm - tl.max(xm, axis=1)[:, None])
            score = p / tl.sum(p, axis=1)[:, None]
        if HAS_BIAS:
            key = _finite(score + bias[None, :])
        else:
            key = score
        key = tl.where(mask, key, _NEG_INF)

        if NUM_GROUPS > 1:
            # Every expert lane carries its group's score (-inf on padded lanes).
            gkey = tl.full([BLOCK_M, BLOCK_E], _NEG_INF, tl.float32)
            for g in range(NUM_GROUPS):
                in_group = (group_of == g * 1.0)[None, :] & mask
                kg = tl.where(in_group, key, _NEG_INF)
                if HAS_BIAS:
                    top1, first = _first_max(kg)
                    top2 = tl.max(tl.where(first, _NEG_INF, kg), axis=1)
                    gscore = _finite(top1 + top2)
                else:
                    gscore = tl.max(kg, axis=1)
                gkey = tl.where(in_group, gscore[:, None], gkey)
            keep = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
            for _step in range(TOPK_GROUP):
                # The lowest lane with the best group score lies in the lowest such group.
                _best_group, first = _first_max(gkey)
                chosen_group = tl.sum(tl.where(first, group_of[None, :], 0.0), axis=1)
                chosen = group_of[None, :] == chosen_group[:, None]
                keep = tl.where(chosen, 1.0, keep)
                gkey = tl.where(chosen, _NEG_INF, gkey)
            key = tl.where(keep > 0.0, key, _NEG_INF)

        w_acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        id_acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        for j in range(TOPK):
            _best, hit = _first_max(key)
            w = tl.sum(tl.where(hit, score, 0.0), axis=1)
            pick = tl.sum(tl.where(hit, lane[None, :], 0.0), axis=1)
            key = tl.where(hit, _NEG_INF, key)
            slot = col[None, :] == j * 1.0
            w_acc = tl.where(slot, w[:, None], w_acc)
            id_acc = tl.where(slot, pick[:, None], id_acc)
        if RENORMALIZE:
            total = tl.sum(w_acc, axis=1)  # lanes >= TOPK hold 0
            w_acc = w_acc / tl.where(total > 0.0, total, 1.0)[:, None]
        w_acc = w_acc * routed_scaling_factor

        out_base = tl.cast(row0, tl.int64) * TOPK
        out_offs = tile_rows[:, None] * TOPK + tl.arange(0, BLOCK_K)[None, :]
        out_mask = row_ok[:, None] & (tl.arange(0, BLOCK_K) < TOPK)[None, :]
        tl.store(weights_ptr + out_base + out_offs, w_acc, mask=out_mask)
        tl.store(ids_ptr + out_base + out_offs, id_acc.to(tl.int32), mask=out_mask)


@triton.jit
def _align_layout_kernel(
    counts_ptr,
    expert_map_ptr,
    sorted_ids_ptr,
    expert_ids_ptr,
    num_post_pad_ptr,
    num_runs,
    num_experts,
    block_size,
    numel,
    max_padded,
    num_blocks,
    HAS_MAP: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """moe_align_block_size's outputs besides the scatter: num_tokens_post_pad, the expert of every
    block (-1 past the end), and the sentinel fill of sorted_token_ids (before the scatter)."""
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < num_experts
    ends, padded, _before, _totals = bin_layout(counts_ptr, num_runs, 0, num_experts, block_size, BLOCK_E)
    total = tl.sum(padded.to(tl.float32), axis=0).to(tl.int32)
    if HAS_MAP:
        # Read in the map's own dtype; entries outside [-1, num_experts) label their blocks -1.
        raw = tl.load(expert_map_ptr + offs_e, mask=e_ok, other=-1)
        emap = tl.where((raw >= 0) & (raw < num_experts), raw, -1).to(tl.float32)
    if tl.program_id(0) == 0:
        tl.store(num_post_pad_ptr, total)
    for bt in range(tl.program_id(0), tl.cdiv(num_blocks, BLOCK_B), tl.num_programs(0)):
        blocks = bt * BLOCK_B + tl.arange(0, BLOCK_B)
        first_pos = blocks * block_size
        # A block's expert = how many experts end at or before its first slot.
        done = (ends[None, :] <= first_pos[:, None]) & e_ok[None, :]
        eid = tl.sum(tl.where(done, 1.0, 0.0), axis=1)
        if HAS_MAP:
            eid = tl.sum(tl.where(offs_e[None, :].to(tl.float32) == eid[:, None], emap[None, :], 0.0), axis=1)
        eid = tl.where(first_pos < total, eid.to(tl.int32), -1)
        tl.store(expert_ids_ptr + blocks, eid, mask=blocks < num_blocks)
    sentinel = tl.zeros([BLOCK_S], tl.int32) + numel
    for st in range(tl.program_id(0), tl.cdiv(max_padded, BLOCK_S), tl.num_programs(0)):
        offs = st * BLOCK_S + tl.arange(0, BLOCK_S)
        tl.store(sorted_ids_ptr + offs, sentinel, mask=offs < max_padded)
