"""Device side of the MoE counting sort (design notes: `kernels.moe_sort`): the count and scatter
kernels, and `bin_layout`, the per-bin scan the layout kernels of both MoE families call."""

import triton
import triton.language as tl

from vllm_ascend_triton.runtime import launch as _launch  # noqa: F401  (applies VAT_BACKEND before @triton.jit)

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
def bin_layout(counts_ptr, num_runs, upto, num_bins, block_size, BLOCK_B: tl.constexpr):
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
    ends, padded, before, _totals = bin_layout(
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
