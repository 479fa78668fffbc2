"""MoE routing on Ascend vector cores: `fused_topk`, `grouped_topk`, `moe_align_block_size`.

Semantics (vLLM 0.32's references)
----------------------------------
- `fused_topk` / `grouped_topk` return `(weights float32 [M, k], ids int32 [M, k])`, ids in
  descending order of the selection key. Scores are `softmax(logits)` over all experts or
  `sigmoid(logits)`, computed in fp32 whatever the input dtype. With an
  `e_score_correction_bias`, experts (and groups) are selected by `score + bias`, while the
  weights are the unbiased scores. `renormalize` divides the k weights by their sum, then
  `routed_scaling_factor` multiplies them (vLLM's order).
- `grouped_topk` is vLLM's native `grouped_topk`: the group score is the group's max score, or
  the sum of its top-2 `score + bias` when a bias is given; the `topk_group` best groups are kept
  and the top-k is taken among their experts.
- `moe_align_block_size` reproduces the layout of vLLM's `moe_align_block_size` (Python wrapper
  + CUDA op): buffers sized `numel + E * (block_size - 1)` (rounded up to a block with
  `pad_sorted_ids`; at most `numel * block_size` when `numel < E`), every expert's routes padded
  to a multiple of `block_size` and laid out in ascending expert order, `sorted_token_ids`
  padding = `topk_ids.numel()`, `expert_ids[b]` = the expert of block b, `-1` for blocks after
  `num_tokens_post_pad`. With `expert_map` every expert is counted and used blocks carry
  `expert_map[e]` (-1 = expert not local). Within an expert, routes are in ascending flat index
  (the order of vLLM's deterministic small-batch/stable kernels; its large-batch CUDA kernel
  places them with atomics in no fixed order). Ids outside `[0, num_experts)` are skipped, as in
  vLLM's kernels.

Edge cases (defined here, tested)
---------------------------------
- Ties: the lowest expert index (and the lowest group index) wins, deterministically.
- Non-finite logits: NaN counts as -inf; +-inf are clamped to +-FLT_MAX before scoring. So ids are
  always k distinct valid experts; a NaN/-inf expert gets weight 0 (softmax or sigmoid) and is
  chosen only after every finite one; softmax splits the mass equally among +inf experts and is
  uniform over a row with no finite logit. A non-finite bias is treated the same way in the key.
  When the k weights sum to 0 (e.g. sigmoid of all -inf), `renormalize` leaves them 0.
- M = 0 returns empty outputs without a launch (align: empty buffers, `num_tokens_post_pad` 0).
- Bad arguments raise `ValueError` naming the argument: `topk > num_experts`, groups not dividing
  the experts, `topk_group > num_expert_group`, `topk > topk_group * group_size`, a bias with
  one-expert groups (vLLM's top-2 group score needs two), unknown `scoring_func`, and wrong
  dtypes (`RoutingArgumentError`, a ValueError that is also a TypeError, so the foundation's
  TypeError-for-dtype convention holds too).

Ascend design
-------------
- Top-k (one kernel serves both APIs; NUM_GROUPS = 1 is plain top-k): persistent grid of at most
  one program per vector core, each looping over tiles of BLOCK_M token rows x BLOCK_E
  (= next power of two >= E) experts held in the Unified Buffer. The tile size keeps
  BLOCK_M * BLOCK_E near 2048 fp32 elements so the handful of live tiles stays well inside half
  of the 192 KB UB (double buffering), and never more rows than tokens (a decode batch of one
  token reduces one row, not a tile of padding); E up to 1024 fits in one row tile, so there is no
  cross-tile merge. Selection is an iterative loop of k steps: row max, then the lowest lane
  holding that max, found as the lane where an fp32 running count (`tl.cumsum`) of the max lanes
  first reaches 1 (one scan instead of a second min-reduction; it also yields the one-hot used
  to read the weight and id with sums), then that lane is masked to -inf. Keys are made finite
  first, so -inf only ever marks "not selectable"; this gives lowest-index tie-breaking
  explicitly instead of relying on `tl.argmax`'s tie rule. Lane indices used in compares are
  fp32 (exact below 2^24) because integer compares are scalarized on Ascend's vector unit. The
  k results accumulate in a [BLOCK_M, BLOCK_K] tile and are written with one contiguous store
  per output (no strided per-column stores). Grouped routing computes each expert's group
  score with one masked reduction per group (two with a bias: top-1, then top-2), then picks
  `topk_group` groups with the same max/first-lane loop, all in the [BLOCK_M, BLOCK_E] layout
  (no reshapes, so group sizes need not be powers of two).
- Align: three launches, no atomics, deterministic. Programs of the count and scatter launches
  own contiguous runs of route tiles (BLOCK_N routes each), so the scratch is one count row per
  program ([<= vector cores, E] int32) and no long scan over tiles is needed.
  1. count: per tile, a one-hot [BLOCK_N, BLOCK_E] compare summed over routes, accumulated over
     the program's run; one contiguous row store per program;
  2. blocks: each program adds up the <= 40 count rows, rounds every expert up to a block and
     takes one `tl.cumsum` over <= 1024 experts for the padded offsets, writes `expert_ids` for
     its blocks (expert of a block = number of experts ending at or before it; `expert_map`
     applied by a one-hot reduction, not a gather) and fills `sorted_token_ids` with the
     sentinel;
  3. scatter: same runs as the count; a route's slot = its expert's offset + routes of earlier
     runs + earlier tiles of this run + its rank in the tile (exclusive `tl.cumsum` of the
     one-hot along routes). The only discrete access is this final scatter store (one scalar
     loop in the adapter IR), inherent to a permutation.
  Counts and offsets that are stored are reduced and scanned in fp32 lanes (exact below 2^24
  slots, which the host checks) and converted to int32: fp32 is the vector unit's native width,
  and Triton's interpreter widens int32 `tl.sum`/`tl.cumsum` results to int64 arrays, which its
  stores then write 8 bytes per element (past the end of the output). The scatter's slots stay
  int32 (they are only addresses; the adapter rejects a scatter addressed through an fp32 ->
  int32 conversion). int64 `topk_ids` are narrowed to int32 on load.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from vllm_ascend_triton.codegen.lower import LoweringRequest, kernel_ref
from vllm_ascend_triton.kernels._check import CheckResult, compare
from vllm_ascend_triton.runtime.checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from vllm_ascend_triton.runtime.configs import lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import bf16_shim, persistent_grid

logger = logging.getLogger(__name__)

MAX_EXPERTS = 1024  # one row tile holds every expert; beyond this a cross-tile merge would be needed
MAX_TOPK = 32
SCORING_FUNCS = ("softmax", "sigmoid")
_TOPK_TILE_ELEMS = 2048  # BLOCK_M * BLOCK_E: ~8 KB per fp32 tile, a few live tiles in half the UB
_ALIGN_TILE_ELEMS = 4096  # BLOCK_N * BLOCK_E of the int32 one-hot tiles
_FLT_MAX = 3.4028234663852886e38
_MAX_EXACT_FP32_INT = 2**24  # align counts/slots are reduced in fp32 lanes
_NEG_INF = tl.constexpr(float("-inf"))  # marks "not selectable" in the top-k kernel


class RoutingArgumentError(TypeError, ValueError):
    """A wrong dtype: a ValueError per the routing API's contract, a TypeError per the foundation's."""


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


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
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < num_rows
        mask = row_ok[:, None] & e_ok[None, :]
        x = tl.load(logits_ptr + rows[:, None] * logits_row_stride + offs_e[None, :], mask=mask, other=0.0)
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

        out_offs = rows[:, None] * TOPK + tl.arange(0, BLOCK_K)[None, :]
        out_mask = row_ok[:, None] & (tl.arange(0, BLOCK_K) < TOPK)[None, :]
        tl.store(weights_ptr + out_offs, w_acc, mask=out_mask)
        tl.store(ids_ptr + out_offs, id_acc.to(tl.int32), mask=out_mask)


@triton.jit
def _load_route_ids(topk_ids_ptr, offs, numel, num_experts):
    # Out-of-range ids (and padding lanes) become -1, which matches no expert lane.
    raw = tl.load(topk_ids_ptr + offs, mask=offs < numel, other=-1)
    return tl.where((raw >= 0) & (raw < num_experts), raw, -1).to(tl.int32)


@triton.jit
def _tile_range(numel, tiles_per_program, BLOCK_N: tl.constexpr):
    # Each program owns a contiguous run of route tiles, so ranges are ordered by program id.
    first = tl.program_id(0) * tiles_per_program
    return first, tl.minimum(first + tiles_per_program, tl.cdiv(numel, BLOCK_N))


@triton.jit
def _align_count_kernel(
    topk_ids_ptr,
    range_counts_ptr,
    numel,
    num_experts,
    tiles_per_program,
    BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    # range_counts[pid, e] = routes to expert e in this program's range of tiles.
    offs_e = tl.arange(0, BLOCK_E)
    counts = tl.zeros([BLOCK_E], tl.float32)
    first, last = _tile_range(numel, tiles_per_program, BLOCK_N)
    for tile in range(first, last):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        ids = _load_route_ids(topk_ids_ptr, offs_n, numel, num_experts)
        counts += tl.sum(tl.where(ids[:, None] == offs_e[None, :], 1.0, 0.0), axis=0)
    row = range_counts_ptr + tl.program_id(0) * num_experts + offs_e
    tl.store(row, counts.to(tl.int32), mask=offs_e < num_experts)


@triton.jit
def _expert_layout(range_counts_ptr, num_ranges, upto, num_experts, block_size, BLOCK_E: tl.constexpr):
    """Per expert lane: padded end offset, padded size, and routes counted by ranges < `upto`.
    At most one row per vector core to add up, so every program recomputes it (no extra launch)."""
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < num_experts
    totals = tl.zeros([BLOCK_E], tl.int32)
    before = tl.zeros([BLOCK_E], tl.int32)
    for r in range(0, num_ranges):
        c = tl.load(range_counts_ptr + r * num_experts + offs_e, mask=e_ok, other=0)
        totals += c
        before += tl.where(r < upto, c, 0)
    padded = (totals + block_size - 1) // block_size * block_size
    ends = tl.cumsum(padded.to(tl.float32), axis=0).to(tl.int32)
    return ends, padded, before


@triton.jit
def _align_blocks_kernel(
    range_counts_ptr,
    expert_map_ptr,
    sorted_ids_ptr,
    expert_ids_ptr,
    num_post_pad_ptr,
    num_ranges,
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
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < num_experts
    ends, padded, _before = _expert_layout(range_counts_ptr, num_ranges, 0, num_experts, block_size, BLOCK_E)
    total = tl.sum(padded.to(tl.float32), axis=0).to(tl.int32)
    if HAS_MAP:
        emap = tl.load(expert_map_ptr + offs_e, mask=e_ok, other=-1).to(tl.float32)
    if tl.program_id(0) == 0:
        tl.store(num_post_pad_ptr, total)
    for bt in range(tl.program_id(0), tl.cdiv(num_blocks, BLOCK_B), tl.num_programs(0)):
        blocks = bt * BLOCK_B + tl.arange(0, BLOCK_B)
        first_pos = blocks * block_size
        # A block's expert = how many experts end at or before its first slot.
        before = (ends[None, :] <= first_pos[:, None]) & e_ok[None, :]
        eid = tl.sum(tl.where(before, 1.0, 0.0), axis=1)
        if HAS_MAP:
            eid = tl.sum(tl.where(offs_e[None, :].to(tl.float32) == eid[:, None], emap[None, :], 0.0), axis=1)
        eid = tl.where(first_pos < total, eid.to(tl.int32), -1)
        tl.store(expert_ids_ptr + blocks, eid, mask=blocks < num_blocks)
    sentinel = tl.zeros([BLOCK_S], tl.int32) + numel
    for st in range(tl.program_id(0), tl.cdiv(max_padded, BLOCK_S), tl.num_programs(0)):
        offs = st * BLOCK_S + tl.arange(0, BLOCK_S)
        tl.store(sorted_ids_ptr + offs, sentinel, mask=offs < max_padded)


@triton.jit
def _align_scatter_kernel(
    topk_ids_ptr,
    range_counts_ptr,
    sorted_ids_ptr,
    num_ranges,
    numel,
    num_experts,
    block_size,
    tiles_per_program,
    BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    # Must run with the count kernel's grid and tiles_per_program (same ranges).
    offs_e = tl.arange(0, BLOCK_E)
    ends, padded, before = _expert_layout(
        range_counts_ptr, num_ranges, tl.program_id(0), num_experts, block_size, BLOCK_E
    )
    # Int32 here (unlike the other align kernels): the adapter cannot scalarize a scatter whose
    # addresses come through an fp32 -> int32 conversion. Only addresses derive from these sums.
    next_slot = ends - padded + before  # next free slot of every expert in this range
    first, last = _tile_range(numel, tiles_per_program, BLOCK_N)
    for tile in range(first, last):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        ids = _load_route_ids(topk_ids_ptr, offs_n, numel, num_experts)
        onehot = (ids[:, None] == offs_e[None, :]).to(tl.int32)
        # Rank among this tile's earlier routes to the same expert: stable order by flat index.
        rank = tl.sum((tl.cumsum(onehot, axis=0) - onehot) * onehot, axis=1)
        slot = tl.sum(onehot * next_slot[None, :], axis=1) + rank
        tl.store(sorted_ids_ptr + slot, offs_n, mask=ids >= 0)
        next_slot += tl.sum(onehot, axis=0)


# --------------------------------------------------------------------------------------------
# Host API
# --------------------------------------------------------------------------------------------


def _check(name: str, t: object, **kwargs) -> torch.Tensor:
    try:
        return check_tensor(name, t, **kwargs)
    except TypeError as exc:
        if isinstance(t, torch.Tensor):  # a tensor of the wrong dtype
            raise RoutingArgumentError(str(exc)) from None
        raise


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _topk_block_m(block_e: int) -> int:
    return max(1, min(64, _TOPK_TILE_ELEMS // block_e))


def _topk_config(kernel: str, num_tokens: int, num_experts: int, topk: int) -> tuple[dict, tuple[int], int]:
    block_e = triton.next_power_of_2(num_experts)
    # No more rows per tile than there are tokens: padding rows would cost full reductions.
    default = {"BLOCK_M": min(_topk_block_m(block_e), triton.next_power_of_2(num_tokens))}
    dev = current_device()
    key = {"num_experts": num_experts, "topk": topk, "num_tokens": num_tokens}
    config = lookup_config(dev.sku.name, kernel, key, default)
    return config, persistent_grid(triton.cdiv(num_tokens, config["BLOCK_M"]), device=dev), block_e


def _route(
    kernel: str,
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    scoring_func: str,
    e_score_correction_bias: torch.Tensor | None,
    routed_scaling_factor: float,
    num_expert_group: int,
    topk_group: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check("gating_output", gating_output, dtypes=FLOAT_DTYPES, ndim=2)
    num_tokens, num_experts = gating_output.shape
    check_positive_int("topk", topk)
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    if scoring_func not in SCORING_FUNCS:
        raise ValueError(f"scoring_func must be one of {SCORING_FUNCS}, got {scoring_func!r}")
    scale = _check_real("routed_scaling_factor", routed_scaling_factor)
    if not 1 <= num_experts <= MAX_EXPERTS:
        raise ValueError(f"gating_output must have 1..{MAX_EXPERTS} experts (dim 1), got {num_experts}")
    if topk > num_experts:
        raise ValueError(f"topk ({topk}) must be <= the number of experts ({num_experts})")
    if topk > MAX_TOPK:
        raise ValueError(f"topk must be <= {MAX_TOPK}, got {topk}")
    group_size = num_experts // num_expert_group
    if e_score_correction_bias is not None:
        _check("e_score_correction_bias", e_score_correction_bias, dtypes=FLOAT_DTYPES, ndim=1)
        check_same_device(gating_output=gating_output, e_score_correction_bias=e_score_correction_bias)
        if e_score_correction_bias.shape[0] != num_experts:
            shape = tuple(e_score_correction_bias.shape)
            raise ValueError(f"e_score_correction_bias must have shape ({num_experts},), got {shape}")
        if num_expert_group > 1 and group_size < 2:
            raise ValueError(
                "e_score_correction_bias needs >= 2 experts per group (group score = sum of the top-2)"
            )

    weights = torch.empty(num_tokens, topk, dtype=torch.float32, device=gating_output.device)
    ids = torch.empty(num_tokens, topk, dtype=torch.int32, device=gating_output.device)
    if num_tokens == 0:
        return weights, ids
    config, grid, block_e = _topk_config(kernel, num_tokens, num_experts, topk)
    logger.debug(
        "%s: M=%d E=%d k=%d groups=%d grid=%s config=%s",
        kernel,
        num_tokens,
        num_experts,
        topk,
        num_expert_group,
        grid,
        config,
    )
    if gating_output.stride(1) != 1:
        gating_output = gating_output.contiguous()
    with bf16_shim() as shim:
        logits = shim.input(gating_output)
        bias = (
            shim.input(e_score_correction_bias.contiguous()) if e_score_correction_bias is not None else None
        )
        _topk_routing_kernel[grid](
            logits,
            bias if bias is not None else logits,  # never read without HAS_BIAS
            weights,
            ids,
            num_tokens,
            num_experts,
            logits.stride(0),
            group_size,
            scale,
            TOPK=topk,
            BLOCK_K=triton.next_power_of_2(topk),
            BLOCK_M=config["BLOCK_M"],
            BLOCK_E=block_e,
            SIGMOID=scoring_func == "sigmoid",
            HAS_BIAS=bias is not None,
            RENORMALIZE=renormalize,
            NUM_GROUPS=num_expert_group,
            TOPK_GROUP=topk_group,
        )
    return weights, ids


def fused_topk(
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    scoring_func: str = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token of `gating_output [M, E]`: `(weights float32 [M, k], ids int32 [M, k])`."""
    return _route(
        "fused_topk",
        gating_output,
        topk,
        renormalize,
        scoring_func,
        e_score_correction_bias,
        routed_scaling_factor,
        1,
        1,
    )


def grouped_topk(
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    num_expert_group: int,
    topk_group: int,
    scoring_func: str = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's native grouped top-k (DeepSeek-V2/V3 routing); outputs as `fused_topk`."""
    check_positive_int("num_expert_group", num_expert_group)
    check_positive_int("topk_group", topk_group)
    _check("gating_output", gating_output, dtypes=FLOAT_DTYPES, ndim=2)
    num_experts = gating_output.shape[1]
    if num_experts % num_expert_group:
        raise ValueError(
            f"num_expert_group ({num_expert_group}) must divide the number of experts ({num_experts})"
        )
    if topk_group > num_expert_group:
        raise ValueError(f"topk_group ({topk_group}) must be <= num_expert_group ({num_expert_group})")
    check_positive_int("topk", topk)
    if topk > topk_group * (num_experts // num_expert_group):
        raise ValueError(
            f"topk ({topk}) must be <= topk_group * experts per group "
            f"({topk_group} * {num_experts // num_expert_group})"
        )
    return _route(
        "grouped_topk",
        gating_output,
        topk,
        renormalize,
        scoring_func,
        e_score_correction_bias,
        routed_scaling_factor,
        num_expert_group,
        topk_group,
    )


def max_num_tokens_padded(numel: int, block_size: int, num_experts: int, pad_sorted_ids: bool = False) -> int:
    """Length of `sorted_token_ids`, as vLLM's wrapper sizes it."""
    size = numel + num_experts * (block_size - 1)
    if pad_sorted_ids:
        size = triton.cdiv(size, block_size) * block_size
    if numel < num_experts:
        size = min(numel * block_size, size)
    return size


def _align_config(numel: int, num_experts: int) -> dict:
    block_e = triton.next_power_of_2(num_experts)
    default = {
        "BLOCK_N": max(16, min(256, _ALIGN_TILE_ELEMS // block_e)),
        "BLOCK_B": max(8, min(256, _ALIGN_TILE_ELEMS // block_e)),
        "BLOCK_S": 1024,
    }
    key = {"num_experts": num_experts, "numel": numel}
    return lookup_config(current_device().sku.name, "moe_align_block_size", key, default)


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    pad_sorted_ids: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort routes by expert, each expert padded to a multiple of `block_size` (vLLM's layout).

    Returns `(sorted_token_ids int32, expert_ids int32, num_tokens_post_pad int32 [1])`.
    """
    _check("topk_ids", topk_ids, dtypes=INDEX_DTYPES, ndim=(1, 2))
    check_positive_int("block_size", block_size)
    check_positive_int("num_experts", num_experts)
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"num_experts must be <= {MAX_EXPERTS}, got {num_experts}")
    if not isinstance(pad_sorted_ids, bool):
        raise TypeError(f"pad_sorted_ids must be a bool, got {type(pad_sorted_ids).__name__}")
    if expert_map is not None:
        _check("expert_map", expert_map, dtypes=INDEX_DTYPES, ndim=1)
        check_same_device(topk_ids=topk_ids, expert_map=expert_map)
        if expert_map.shape[0] != num_experts:
            raise ValueError(f"expert_map must have shape ({num_experts},), got {tuple(expert_map.shape)}")
        expert_map = expert_map.to(torch.int32).contiguous()
    numel = topk_ids.numel()
    device = topk_ids.device
    size = max_num_tokens_padded(numel, block_size, num_experts, pad_sorted_ids)
    if size >= _MAX_EXACT_FP32_INT:
        raise ValueError(f"topk_ids: {numel} routes pad to {size} slots; at most 2^24 are supported")
    num_blocks = triton.cdiv(size, block_size)
    sorted_ids = torch.empty(size, dtype=torch.int32, device=device)
    expert_ids = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_post_pad = torch.zeros(1, dtype=torch.int32, device=device)
    if numel == 0:
        return sorted_ids, expert_ids, num_post_pad

    flat = topk_ids.reshape(-1)
    cfg = _align_config(numel, num_experts)
    dev = current_device()
    block_e = triton.next_power_of_2(num_experts)
    num_tiles = triton.cdiv(numel, cfg["BLOCK_N"])
    (num_ranges,) = grid = persistent_grid(num_tiles, device=dev)
    tiles_per_program = triton.cdiv(num_tiles, num_ranges)
    range_counts = torch.empty(num_ranges, num_experts, dtype=torch.int32, device=device)
    logger.debug(
        "moe_align_block_size: %d routes, E=%d, %d tiles on %d programs, config=%s",
        numel,
        num_experts,
        num_tiles,
        num_ranges,
        cfg,
    )

    _align_count_kernel[grid](
        flat, range_counts, numel, num_experts, tiles_per_program, BLOCK_N=cfg["BLOCK_N"], BLOCK_E=block_e
    )
    block_work = max(triton.cdiv(num_blocks, cfg["BLOCK_B"]), triton.cdiv(size, cfg["BLOCK_S"]))
    _align_blocks_kernel[persistent_grid(block_work, device=dev)](
        range_counts,
        expert_map if expert_map is not None else range_counts,  # never read without HAS_MAP
        sorted_ids,
        expert_ids,
        num_post_pad,
        num_ranges,
        num_experts,
        block_size,
        numel,
        size,
        num_blocks,
        HAS_MAP=expert_map is not None,
        BLOCK_E=block_e,
        BLOCK_B=cfg["BLOCK_B"],
        BLOCK_S=cfg["BLOCK_S"],
    )
    # After the sentinel fill (same stream): route slots overwrite it.
    _align_scatter_kernel[grid](
        flat,
        range_counts,
        sorted_ids,
        num_ranges,
        numel,
        num_experts,
        block_size,
        tiles_per_program,
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_E=block_e,
    )
    return sorted_ids, expert_ids, num_post_pad


# --------------------------------------------------------------------------------------------
# Torch references (the documented semantics, including ties and non-finite logits)
# --------------------------------------------------------------------------------------------


def _finite_ref(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=-_FLT_MAX, posinf=_FLT_MAX, neginf=-_FLT_MAX)


def _select_lowest_first(key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest keys per row; ties go to the lowest index (stable sort)."""
    return torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k]


def grouped_topk_ref(
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    num_expert_group: int = 1,
    topk_group: int = 1,
    scoring_func: str = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `grouped_topk` (and of `fused_topk` with one group)."""
    x = _finite_ref(gating_output.float())
    scores = x.sigmoid() if scoring_func == "sigmoid" else torch.softmax(x, dim=-1)
    m, e = scores.shape
    key = scores if e_score_correction_bias is None else _finite_ref(scores + e_score_correction_bias.float())
    if num_expert_group > 1:
        grouped = key.view(m, num_expert_group, e // num_expert_group)
        if e_score_correction_bias is None:
            gscore = grouped.max(dim=-1).values
        else:
            gscore = _finite_ref(torch.sort(grouped, dim=-1, descending=True).values[..., :2].sum(dim=-1))
        groups = _select_lowest_first(gscore, topk_group)
        keep = torch.zeros(m, num_expert_group, dtype=torch.bool, device=key.device).scatter_(1, groups, True)
        key = key.masked_fill(~keep.repeat_interleave(e // num_expert_group, dim=1), float("-inf"))
    ids = _select_lowest_first(key, topk)
    weights = scores.gather(1, ids)
    if renormalize:
        total = weights.sum(dim=-1, keepdim=True)
        weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    return (weights * routed_scaling_factor).float(), ids.to(torch.int32)


def moe_align_block_size_ref(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    pad_sorted_ids: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference of the layout vLLM's CUDA op produces (stable order within an expert)."""
    flat = topk_ids.reshape(-1).long()
    numel = flat.numel()
    size = max_num_tokens_padded(numel, block_size, num_experts, pad_sorted_ids)
    sorted_ids = torch.full((size,), numel, dtype=torch.int32)
    expert_ids = torch.full((triton.cdiv(size, block_size),), -1, dtype=torch.int32)
    start = 0
    for e in range(num_experts):
        routes = torch.nonzero(flat == e).flatten()
        sorted_ids[start : start + routes.numel()] = routes.to(torch.int32)
        padded = triton.cdiv(routes.numel(), block_size) * block_size
        expert_ids[start // block_size : (start + padded) // block_size] = (
            e if expert_map is None else int(expert_map[e])
        )
        start += padded
    return sorted_ids, expert_ids, torch.tensor([start], dtype=torch.int32)


# --------------------------------------------------------------------------------------------
# Lowering variants and self-check
# --------------------------------------------------------------------------------------------

_TOPK_SIG = {
    "logits_ptr": "*fp32",
    "bias_ptr": "*fp32",
    "weights_ptr": "*fp32",
    "ids_ptr": "*i32",
    "num_rows": "i32",
    "num_experts": "i32",
    "logits_row_stride": "i32",
    "group_size": "i32",
    "routed_scaling_factor": "fp32",
}

# (label, logits dtype, E, k, sigmoid, bias, renormalize, groups, topk_group)
_TOPK_VARIANTS = (
    ("mixtral_8x2_softmax_fp16", "fp16", 8, 2, False, False, True, 1, 1),
    ("qwen3_128x8_softmax_bf16", "bf16", 128, 8, False, False, True, 1, 1),
    ("e512_k16_sigmoid_bias_fp32", "fp32", 512, 16, True, True, True, 1, 1),
    ("dsv3_256x8_grouped_sigmoid_bias_bf16", "bf16", 256, 8, True, True, True, 8, 4),
    ("e160_grouped_softmax_fp16", "fp16", 160, 6, False, False, False, 8, 3),
)


def lowering_requests(sku: str) -> list[LoweringRequest]:
    """Default-config variants of every routing kernel for `sku`."""
    reqs = []
    for label, dtype, e, k, sigmoid, bias, renorm, groups, topk_group in _TOPK_VARIANTS:
        block_e = triton.next_power_of_2(e)
        consts = {
            "TOPK": k,
            "BLOCK_K": triton.next_power_of_2(k),
            "BLOCK_M": _topk_block_m(block_e),
            "BLOCK_E": block_e,
            "SIGMOID": sigmoid,
            "HAS_BIAS": bias,
            "RENORMALIZE": renorm,
            "NUM_GROUPS": groups,
            "TOPK_GROUP": topk_group,
        }
        sig = {**_TOPK_SIG, "logits_ptr": f"*{dtype}", "bias_ptr": f"*{dtype}"}
        kernel = "grouped_topk" if groups > 1 else "fused_topk"
        reqs.append(LoweringRequest(kernel_ref(_topk_routing_kernel), sig, consts, sku, f"{kernel}_{label}"))
    for e, id_dtype, has_map in ((8, "i32", False), (256, "i64", True), (512, "i32", True)):
        block_e = triton.next_power_of_2(e)
        block_n = max(16, min(256, _ALIGN_TILE_ELEMS // block_e))
        block_b = max(8, min(256, _ALIGN_TILE_ELEMS // block_e))
        tag = f"e{e}_{id_dtype}{'_map' if has_map else ''}"
        reqs += [
            LoweringRequest(
                kernel_ref(_align_count_kernel),
                {
                    "topk_ids_ptr": f"*{id_dtype}",
                    "range_counts_ptr": "*i32",
                    "numel": "i32",
                    "num_experts": "i32",
                    "tiles_per_program": "i32",
                },
                {"BLOCK_N": block_n, "BLOCK_E": block_e},
                sku,
                f"align_count_{tag}",
            ),
            LoweringRequest(
                kernel_ref(_align_scatter_kernel),
                {
                    "topk_ids_ptr": f"*{id_dtype}",
                    "range_counts_ptr": "*i32",
                    "sorted_ids_ptr": "*i32",
                    "num_ranges": "i32",
                    "numel": "i32",
                    "num_experts": "i32",
                    "block_size": "i32",
                    "tiles_per_program": "i32",
                },
                {"BLOCK_N": block_n, "BLOCK_E": block_e},
                sku,
                f"align_scatter_{tag}",
            ),
            LoweringRequest(
                kernel_ref(_align_blocks_kernel),
                {
                    "range_counts_ptr": "*i32",
                    "expert_map_ptr": "*i32",
                    "sorted_ids_ptr": "*i32",
                    "expert_ids_ptr": "*i32",
                    "num_post_pad_ptr": "*i32",
                    "num_ranges": "i32",
                    "num_experts": "i32",
                    "block_size": "i32",
                    "numel": "i32",
                    "max_padded": "i32",
                    "num_blocks": "i32",
                },
                {"HAS_MAP": has_map, "BLOCK_E": block_e, "BLOCK_B": block_b, "BLOCK_S": 1024},
                sku,
                f"align_blocks_{tag}",
            ),
        ]
    return reqs


def self_check() -> list[CheckResult]:
    """Small cases against the torch references (a second or two on the interpreter)."""
    gen = torch.Generator().manual_seed(0)
    results = []
    for name, m, e, k, groups, topk_group, func, with_bias, scale in (
        ("mixtral_8x2", 5, 8, 2, 1, 1, "softmax", False, 1.0),
        ("qwen3_128x8", 3, 128, 8, 1, 1, "softmax", False, 1.0),
        ("dsv3_256x8_grouped", 3, 256, 8, 8, 4, "sigmoid", True, 2.5),
    ):
        logits = torch.randn(m, e, generator=gen)
        bias = torch.randn(e, generator=gen) * 0.1 if with_bias else None
        if groups > 1:
            out = grouped_topk(logits, k, True, groups, topk_group, func, bias, scale)
        else:
            out = fused_topk(logits, k, True, func, bias, scale)
        ref = grouped_topk_ref(logits, k, True, groups, topk_group, func, bias, scale)
        api = "grouped_topk" if groups > 1 else "fused_topk"
        results.append(compare(api, f"{name} weights", out[0], ref[0], 1e-5))
        results.append(compare(api, f"{name} ids", out[1], ref[1], 0.0))
    ids = torch.randint(0, 16, (37, 4), generator=gen, dtype=torch.int32)
    out = moe_align_block_size(ids, 16, 16)
    ref = moe_align_block_size_ref(ids, 16, 16)
    for what, a, b in zip(("sorted_token_ids", "expert_ids", "num_tokens_post_pad"), out, ref, strict=True):
        results.append(compare("moe_align_block_size", f"37x4 routes, 16 experts: {what}", a, b, 0.0))
    return results
