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
  one-expert groups (vLLM's top-2 group score needs two), unknown `scoring_func`; wrong dtypes
  raise `RoutingArgumentError`, a TypeError (the package's error type for dtypes) that is also
  a ValueError (the routing API's historical contract). Limits (`kernels.limits`, the same for
  every MoE kernel): at most `MOE_MAX_EXPERTS` = 1024 experts, `MOE_MAX_TOPK` = 32, and
  `MOE_MAX_SLOTS` = 2^24 padded align slots; past a limit a `ValueError`.

Out-of-range data (one contract for every MoE kernel, here and in `fused_moe`)
------------------------------------------------------------------------------
Data-dependent checks cost a device sync, so on an NPU they are off unless `VAT_CHECK_INPUTS=1`.
With checks on, `moe_align_block_size` raises `ValueError` for `expert_map` entries outside
`[-1, num_experts)` (saying so when they do not even fit int32). With checks off the kernels
still never read or write outside their tensors, and the results are defined:
- An expert id outside `[0, num_experts)` (the documented -1 included) drops the route: it gets
  no slot in `sorted_token_ids` and counts toward no expert (vLLM's kernels skip them too). Ids
  are compared in their own dtype before any narrowing, so an int64 id such as 2^32 + 1 never
  wraps into range.
- An `expert_map` entry outside `[-1, num_experts)` (int64 entries compared unwrapped) counts as
  -1: its blocks are labelled -1, like a non-local expert.
- Non-finite logits and biases: see above (routing is defined for every float value).

Ascend design
-------------
- Top-k (one kernel serves both APIs; NUM_GROUPS = 1 is plain top-k): persistent grid of at most
  one program per vector core, each looping over tiles of BLOCK_M token rows x BLOCK_E
  (= next power of two >= E) experts held in the Unified Buffer. BLOCK_M * BLOCK_E
  comes from the SKU's Unified Buffer (`runtime.ub.tile_elements`, 8 live fp32 tiles, double
  buffered: 2048 elements on a 192 KB UB), and never more rows than tokens (a decode batch of one
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
- Align and `moe_permute` share one counting sort (`kernels.moe_sort`; three launches, no atomics,
  deterministic, stable by route index): `moe_sort_count` stores one histogram row per program
  (programs own contiguous runs of BLOCK_N-route tiles, at most one program per vector core, so
  the scratch is int32 `[programs, experts]`: 81,920 bytes at 512 experts on a 40-core 910B3,
  whatever the number of routes); the API's layout launch (`moe_align_layout` here) and the
  scatter each redo the scan themselves in every program (add up <= 48 rows, one per vector core,
  then one `tl.cumsum` over the experts), in parallel; `moe_sort_scatter` gives every route its
  slot = its expert's padded offset + routes of earlier runs + earlier tiles of this run + its
  rank in the tile (exclusive `tl.cumsum` of the one-hot). The only discrete access is that final
  scatter store (one scalar loop in the adapter IR), inherent to a permutation. `moe_align_layout`
  writes `num_tokens_post_pad`, every block's expert (number of experts ending at or before it;
  `expert_map` applied by a one-hot reduction, not a gather) and the sentinel fill. Counts that
  are stored are reduced and scanned in fp32 lanes (exact below 2^24 slots, which the host checks)
  and converted to int32: fp32 is the vector unit's native width. The scatter's slots stay int32
  (the adapter rejects a scatter addressed through an fp32 -> int32 conversion). The top-k
  kernel's row and output bases are scalar int64 products, so token counts x strides past 2^31
  elements cannot overflow; offsets inside a tile are int32.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import triton

from vllm_ascend_triton.kernels.limits import MOE_MAX_EXPERTS, MOE_MAX_SLOTS, MOE_MAX_TOPK
from vllm_ascend_triton.kernels.moe_routing._kernels import _align_layout_kernel, _topk_routing_kernel
from vllm_ascend_triton.kernels.moe_routing.reference import (
    grouped_topk_ref,
    max_num_tokens_padded,
    moe_align_block_size_ref,
)
from vllm_ascend_triton.kernels.moe_sort import (
    bin_lanes,
    check_expert_map_values,
    plan_sort,
    sort_launches,
)
from vllm_ascend_triton.runtime.checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from vllm_ascend_triton.runtime.configs import ShapeCache, lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import LaunchSpec, bf16_shim, persistent_grid
from vllm_ascend_triton.runtime.ub import tile_elements

logger = logging.getLogger(__name__)

__all__ = [
    "fused_topk",
    "grouped_topk",
    "moe_align_block_size",
    "max_num_tokens_padded",
    "grouped_topk_ref",
    "moe_align_block_size_ref",
    "RoutingArgumentError",
]

SCORING_FUNCS = ("softmax", "sigmoid")
# Live fp32 [BLOCK_M, BLOCK_E] tiles of the top-k loop (logits, scores, key, one-hot, temporaries):
# 2048 elements per tile on a 192 KB UB.
_TOPK_LIVE_TILES = 8
# Live [BLOCK_N, BLOCK_E] one-hot tiles of the align kernels (one-hot, its cumsum, products).
_ALIGN_LIVE_TILES = 4


class RoutingArgumentError(TypeError, ValueError):
    """A wrong dtype: a ValueError per the routing API's contract, a TypeError per the foundation's."""


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
    return max(1, min(64, tile_elements(_TOPK_LIVE_TILES, 4) // block_e))


_PLANS = ShapeCache("moe_routing")


def _topk_config(kernel: str, num_tokens: int, num_experts: int, topk: int) -> tuple[dict, tuple[int], int]:
    plan_key = (kernel, num_tokens, num_experts, topk)
    plan = _PLANS.get(plan_key)
    if plan is not None:
        return plan
    return _PLANS.put(plan_key, _plan_topk(kernel, num_tokens, num_experts, topk))


def _plan_topk(kernel: str, num_tokens: int, num_experts: int, topk: int) -> tuple[dict, tuple[int], int]:
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
    if not 1 <= num_experts <= MOE_MAX_EXPERTS:
        raise ValueError(f"gating_output must have 1..{MOE_MAX_EXPERTS} experts (dim 1), got {num_experts}")
    if topk > num_experts:
        raise ValueError(f"topk ({topk}) must be <= the number of experts ({num_experts})")
    if topk > MOE_MAX_TOPK:
        raise ValueError(f"topk must be <= {MOE_MAX_TOPK}, got {topk}")
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
        LaunchSpec(
            name=kernel,
            kernel=_topk_routing_kernel,
            grid=grid,
            args=dict(
                logits_ptr=logits,
                bias_ptr=bias if bias is not None else logits,  # never read without HAS_BIAS
                weights_ptr=weights,
                ids_ptr=ids,
                num_rows=num_tokens,
                num_experts=num_experts,
                logits_row_stride=logits.stride(0),
                group_size=group_size,
                routed_scaling_factor=scale,
            ),
            constexprs=dict(
                TOPK=topk,
                BLOCK_K=triton.next_power_of_2(topk),
                BLOCK_M=config["BLOCK_M"],
                BLOCK_E=block_e,
                SIGMOID=scoring_func == "sigmoid",
                HAS_BIAS=bias is not None,
                RENORMALIZE=renormalize,
                NUM_GROUPS=num_expert_group,
                TOPK_GROUP=topk_group,
            ),
            config=config,
        ).launch()
    return weights, ids


def fused_topk(
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    scoring_func: str = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token (vLLM's `fused_topk` semantics).

    Args:
        gating_output: router logits `[M, E]`, fp16/bf16/fp32; scored in fp32.
        topk: k, 1..min(E, MOE_MAX_TOPK).
        renormalize: divide the k weights by their sum (before `routed_scaling_factor`).
        scoring_func: "softmax" (over all experts) or "sigmoid".
        e_score_correction_bias: optional fp `[E]`: experts are chosen by score + bias, weights are
            the unbiased scores.
        routed_scaling_factor: multiplies the final weights.

    Returns:
        `(weights float32 [M, k], ids int32 [M, k])`, ids in descending order of the selection key;
        ties go to the lowest expert. M = 0 gives empty outputs without a launch.

    Raises:
        RoutingArgumentError: (a TypeError and a ValueError) a wrong dtype.
        ValueError: a wrong shape, `topk`, `scoring_func`, device or a limit (`kernels.limits`).

    Non-finite logits are defined, not errors: NaN counts as -inf, +-inf is clamped (module docstring).
    """
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
    """vLLM's native grouped top-k (DeepSeek-V2/V3 routing).

    Args:
        gating_output: router logits `[M, E]`, fp16/bf16/fp32; scored in fp32.
        topk: k experts per token, at most `topk_group * E / num_expert_group`.
        renormalize: divide the k weights by their sum (before `routed_scaling_factor`).
        num_expert_group: groups; must divide E.
        topk_group: groups kept per token, <= `num_expert_group`.
        scoring_func: "softmax" or "sigmoid".
        e_score_correction_bias: optional fp `[E]`: the group score becomes the sum of the group's
            top-2 score + bias (needs groups of >= 2 experts); experts are chosen by score + bias,
            weights are the unbiased scores.
        routed_scaling_factor: multiplies the final weights.

    Returns:
        `(weights float32 [M, k], ids int32 [M, k])`, as `fused_topk`; ties go to the lowest group,
        then the lowest expert.

    Raises:
        RoutingArgumentError: (a TypeError and a ValueError) a wrong dtype.
        ValueError: groups that do not divide E, `topk_group > num_expert_group`, `topk` larger than
            the kept groups hold, a bias with one-expert groups, a wrong shape, device or limit.
    """
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


def _align_layout_config(num_experts: int) -> dict:
    plan_key = ("moe_align_layout", num_experts)
    plan = _PLANS.get(plan_key)
    if plan is not None:
        return plan
    return _PLANS.put(plan_key, _plan_align_layout(num_experts))


def _align_plan(
    numel: int, num_experts: int, num_blocks: int, size: int, block_size: int, has_map: bool
) -> tuple[Any, LaunchSpec]:
    """The sort's launches and the layout launch of `moe_align_block_size` as validated templates
    (cached per size: a call only hands its tensors over)."""
    plan_key = ("moe_align", numel, num_experts, num_blocks, size, block_size, has_map)
    cached = _PLANS.get(plan_key)
    if cached is not None:
        return cached
    dev = current_device()
    # Bins are the global experts; the map only relabels blocks (vLLM's wrapper does the same).
    plan = plan_sort(numel, num_experts, num_experts, has_map=False, device=dev)
    cfg = _align_layout_config(num_experts)
    block_work = max(triton.cdiv(num_blocks, cfg["BLOCK_B"]), triton.cdiv(size, cfg["BLOCK_S"]))
    layout = LaunchSpec(
        name="moe_align_layout",
        kernel=_align_layout_kernel,
        grid=persistent_grid(block_work, device=dev),
        args=dict(
            counts_ptr=None, expert_map_ptr=None, sorted_ids_ptr=None, expert_ids_ptr=None,
            num_post_pad_ptr=None, num_runs=plan.runs, num_experts=num_experts,
            block_size=block_size, numel=numel, max_padded=size, num_blocks=num_blocks,
        ),
        constexprs=dict(
            HAS_MAP=has_map, BLOCK_E=bin_lanes(num_experts), BLOCK_B=cfg["BLOCK_B"], BLOCK_S=cfg["BLOCK_S"]
        ),
        config=cfg,
    )  # fmt: skip
    logger.debug(
        "moe_align_block_size: %d routes, E=%d, %d runs of %d tiles, scratch %d bytes, config=%s",
        numel, num_experts, plan.runs, plan.tiles_per_program, plan.scratch_bytes, cfg,
    )  # fmt: skip
    return _PLANS.put(plan_key, (sort_launches(plan, block_size, write_inv=False), layout))


def _plan_align_layout(num_experts: int) -> dict:
    block_e = bin_lanes(num_experts)
    # [BLOCK_B blocks, BLOCK_E experts] compare tiles; BLOCK_S int32 sentinel lanes per fill store.
    default = {"BLOCK_B": max(8, min(256, tile_elements(_ALIGN_LIVE_TILES, 4) // block_e)), "BLOCK_S": 1024}
    return lookup_config(current_device().sku.name, "moe_align_layout", {"num_experts": num_experts}, default)


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    pad_sorted_ids: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort routes by expert, each expert padded to a multiple of `block_size` (vLLM's layout).

    Args:
        topk_ids: int32/int64 `[M, k]` or `[N]` expert ids of every route.
        block_size: the GEMM row block each expert is padded to.
        num_experts: E, <= MOE_MAX_EXPERTS; ids outside `[0, E)` are dropped.
        expert_map: optional int32/int64 `[E]` global -> local id (-1 = not local): used blocks carry
            the mapped id.
        pad_sorted_ids: round the sorted buffer up to a whole block (vLLM's flag).

    Returns:
        `(sorted_token_ids int32, expert_ids int32, num_tokens_post_pad int32 [1])`: padding entries
        of `sorted_token_ids` are `topk_ids.numel()`, `expert_ids` is -1 past the used blocks.

    Raises:
        TypeError: a wrong dtype.
        ValueError: a wrong shape, size or limit; with input checks on, `expert_map` entries outside
            `[-1, E)`. With checks off such entries label their blocks -1.
    """
    _check("topk_ids", topk_ids, dtypes=INDEX_DTYPES, ndim=(1, 2))
    check_positive_int("block_size", block_size)
    check_positive_int("num_experts", num_experts)
    if num_experts > MOE_MAX_EXPERTS:
        raise ValueError(f"num_experts must be <= {MOE_MAX_EXPERTS}, got {num_experts}")
    if not isinstance(pad_sorted_ids, bool):
        raise TypeError(f"pad_sorted_ids must be a bool, got {type(pad_sorted_ids).__name__}")
    if expert_map is not None:
        _check("expert_map", expert_map, dtypes=INDEX_DTYPES, ndim=1)
        check_same_device(topk_ids=topk_ids, expert_map=expert_map)
        if expert_map.shape[0] != num_experts:
            raise ValueError(f"expert_map must have shape ({num_experts},), got {tuple(expert_map.shape)}")
        check_expert_map_values(expert_map, num_experts)
        expert_map = expert_map.contiguous()  # its own dtype: the kernel never wraps int64 entries
    numel = topk_ids.numel()
    device = topk_ids.device
    size = max_num_tokens_padded(numel, block_size, num_experts, pad_sorted_ids)
    if size >= MOE_MAX_SLOTS:
        raise ValueError(
            f"topk_ids: {numel} routes pad to {size} slots; at most {MOE_MAX_SLOTS} are supported"
        )
    num_blocks = triton.cdiv(size, block_size)
    sorted_ids = torch.empty(size, dtype=torch.int32, device=device)
    expert_ids = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_post_pad = torch.zeros(1, dtype=torch.int32, device=device)
    if numel == 0:
        return sorted_ids, expert_ids, num_post_pad

    flat = topk_ids.reshape(-1).contiguous()
    sorts, layout = _align_plan(numel, num_experts, num_blocks, size, block_size, expert_map is not None)
    counts = sorts.count(flat, None)
    args = {
        **layout.args,
        "counts_ptr": counts,
        "expert_map_ptr": expert_map if expert_map is not None else counts,  # read only with HAS_MAP
        "sorted_ids_ptr": sorted_ids,
        "expert_ids_ptr": expert_ids,
        "num_post_pad_ptr": num_post_pad,
    }
    layout.with_args(args).launch()
    # After the sentinel fill (same stream): route slots overwrite it.
    sorts.scatter(flat, None, counts, sorted_ids, None)
    return sorted_ids, expert_ids, num_post_pad
