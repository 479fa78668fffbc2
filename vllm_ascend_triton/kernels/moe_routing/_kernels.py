"""The @triton.jit bodies of the moe_routing family (design notes: the package docstring)."""

import triton
import triton.language as tl

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


# ----------------------------------------------------------------------------------------------
# The MoE counting sort (moe_align_block_size and moe_permute): histogram, scan, scatter.
# Routes are split into contiguous runs of BLOCK_N-route tiles, one run per program (<= one
# program per vector core), so the scratch is one count row per program: [programs, bins] int32.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _route_keys(ids_ptr, offs, numel, num_ids, num_bins, map_vals, id_lanes, HAS_MAP: tl.constexpr):
    """Bin of each route, -1 = dropped. An id outside [0, num_ids) is dropped; without a map the
    id is the bin (num_ids == num_bins); with one, `map_vals` (the sanitized map, one fp32 lane per
    id, -1 = dropped) gives the bin through a one-hot reduction: no gather through the ids."""
    raw = tl.load(ids_ptr + offs, mask=offs < numel, other=-1)
    # Compared in the ids' own dtype before narrowing: an int64 id never wraps into range.
    ids = tl.where((raw >= 0) & (raw < num_ids), raw, -1).to(tl.int32)
    if HAS_MAP:
        hit = ids[:, None] == id_lanes[None, :]
        ids = (tl.sum(tl.where(hit, map_vals[None, :] + 1.0, 0.0), axis=1) - 1.0).to(tl.int32)
    return ids


@triton.jit
def _map_lanes(map_ptr, num_ids, num_bins, HAS_MAP: tl.constexpr, BLOCK_I: tl.constexpr):
    """The expert map as fp32 lanes, entries outside [0, num_bins) as -1 (read in the map's own
    dtype: an int64 entry never wraps into range). Without a map nothing is read."""
    id_lanes = tl.arange(0, BLOCK_I)
    if HAS_MAP:
        m = tl.load(map_ptr + id_lanes, mask=id_lanes < num_ids, other=-1)
        vals = tl.where((m >= 0) & (m < num_bins), m, -1).to(tl.float32)
    else:
        vals = tl.zeros([BLOCK_I], tl.float32) - 1.0
    return vals, id_lanes


@triton.jit
def _tile_range(numel, tiles_per_program, BLOCK_N: tl.constexpr):
    # Each program owns a contiguous run of route tiles, so runs are ordered by program id.
    first = tl.program_id(0) * tiles_per_program
    return first, tl.minimum(first + tiles_per_program, tl.cdiv(numel, BLOCK_N))


@triton.jit
def _sort_count_kernel(
    ids_ptr,
    map_ptr,
    counts_ptr,
    numel,
    num_ids,
    num_bins,
    tiles_per_program,
    HAS_MAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """counts[pid, b] = routes of this program's run that fall in bin b (one contiguous row store)."""
    bins = tl.arange(0, BLOCK_B)
    map_vals, id_lanes = _map_lanes(map_ptr, num_ids, num_bins, HAS_MAP, BLOCK_I)
    counts = tl.zeros([BLOCK_B], tl.float32)
    first, last = _tile_range(numel, tiles_per_program, BLOCK_N)
    for tile in range(first, last):
        offs = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        keys = _route_keys(ids_ptr, offs, numel, num_ids, num_bins, map_vals, id_lanes, HAS_MAP)
        counts += tl.sum(tl.where(keys[:, None] == bins[None, :], 1.0, 0.0), axis=0)
    tl.store(counts_ptr + tl.program_id(0) * num_bins + bins, counts.to(tl.int32), mask=bins < num_bins)


@triton.jit
def _bin_layout(counts_ptr, num_runs, upto, num_bins, block_size, BLOCK_B: tl.constexpr):
    """The scan, per bin lane: (padded end offset, padded size, routes of runs before `upto`).
    At most one count row per vector core, so every program computes it for itself in parallel
    (no serial pass over chunks, no extra launch)."""
    bins = tl.arange(0, BLOCK_B)
    ok = bins < num_bins
    totals = tl.zeros([BLOCK_B], tl.int32)
    before = tl.zeros([BLOCK_B], tl.int32)
    for r in range(0, num_runs):
        c = tl.load(counts_ptr + r * num_bins + bins, mask=ok, other=0)
        totals += c
        before += tl.where(r < upto, c, 0)
    padded = (totals + block_size - 1) // block_size * block_size
    ends = tl.cumsum(padded.to(tl.float32), axis=0).to(tl.int32)
    return ends, padded, before, totals


@triton.jit
def _sort_scatter_kernel(
    ids_ptr,
    map_ptr,
    counts_ptr,
    sorted_ptr,
    inv_ptr,
    num_runs,
    numel,
    num_ids,
    num_bins,
    block_size,
    tiles_per_program,
    HAS_MAP: tl.constexpr,
    WRITE_INV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """sorted[slot] = route for every kept route; with WRITE_INV also inv[route] = slot (or -1).
    Must run with the count kernel's grid and tiles_per_program (the same runs)."""
    bins = tl.arange(0, BLOCK_B)
    map_vals, id_lanes = _map_lanes(map_ptr, num_ids, num_bins, HAS_MAP, BLOCK_I)
    ends, padded, before, _totals = _bin_layout(
        counts_ptr, num_runs, tl.program_id(0), num_bins, block_size, BLOCK_B
    )
    # Int32 here: the adapter cannot scalarize a scatter whose addresses come through an
    # fp32 -> int32 conversion. Only addresses derive from these sums.
    next_slot = ends - padded + before  # next free slot of every bin in this run
    first, last = _tile_range(numel, tiles_per_program, BLOCK_N)
    for tile in range(first, last):
        offs = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        keys = _route_keys(ids_ptr, offs, numel, num_ids, num_bins, map_vals, id_lanes, HAS_MAP)
        onehot = (keys[:, None] == bins[None, :]).to(tl.int32)
        # Rank among this tile's earlier routes of the same bin: stable order by route index.
        rank = tl.sum((tl.cumsum(onehot, axis=0) - onehot) * onehot, axis=1)
        slot = tl.sum(onehot * next_slot[None, :], axis=1) + rank
        kept = keys >= 0
        tl.store(sorted_ptr + slot, offs, mask=kept)  # the permutation: the only discrete access
        if WRITE_INV:
            tl.store(inv_ptr + offs, tl.where(kept, slot, -1), mask=offs < numel)
        next_slot += tl.sum(onehot, axis=0)


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
    ends, padded, _before, _totals = _bin_layout(counts_ptr, num_runs, 0, num_experts, block_size, BLOCK_E)
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


@triton.jit
def _permute_layout_kernel(
    counts_ptr,
    permuted_idx_ptr,
    tokens_per_expert_ptr,
    offsets_ptr,
    num_runs,
    num_local,
    numel,
    BLOCK_E: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """moe_permute's outputs besides the scatter: rows per local expert, their exclusive prefix
    offsets, and the -1 fill of permuted_idx (before the scatter)."""
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < num_local
    if tl.program_id(0) == 0:
        ends, _padded, _before, totals = _bin_layout(counts_ptr, num_runs, 0, num_local, 1, BLOCK_E)
        tl.store(tokens_per_expert_ptr + offs_e, totals, mask=e_ok)
        tl.store(offsets_ptr + 1 + offs_e, ends, mask=e_ok)
        tl.store(offsets_ptr + offs_e, tl.zeros([BLOCK_E], tl.int32), mask=offs_e == 0)
    fill = tl.zeros([BLOCK_S], tl.int32) - 1
    for st in range(tl.program_id(0), tl.cdiv(numel, BLOCK_S), tl.num_programs(0)):
        offs = st * BLOCK_S + tl.arange(0, BLOCK_S)
        tl.store(permuted_idx_ptr + offs, fill, mask=offs < numel)
