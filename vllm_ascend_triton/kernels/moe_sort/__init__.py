"""The MoE counting sort, host side: one histogram + scan + scatter primitive under both
`moe_align_block_size` (bins = global experts, each padded to a block) and `moe_permute` /
`fused_experts` (bins = local experts through an optional expert_map, block 1).

1. `moe_sort_count`: route tiles are split into contiguous runs, one per program (at most one
   program per vector core); each program stores its run's histogram as one row of an
   int32 `[programs, bins]` scratch: O(cores x experts), whatever the number of routes.
2. scan: every program of the next launches adds up the <= cores rows itself and takes one
   `tl.cumsum` over the bins (`bin_layout`), in parallel; no program scans serially over chunks.
3. `moe_sort_scatter`: a route's slot = its bin's (padded) offset + routes of earlier runs +
   earlier tiles of this run + its rank in the tile (exclusive cumsum of the one-hot). The store
   of the permutation is the only discrete access of the sort.

Between the count and the scatter, the API's own layout launch writes the per-bin outputs and
fills the sorted buffer with its sentinel. No atomics (a vectorized `tl.atomic_add` of many lanes
to one address executes once on the NPU), deterministic, stable by route index within a bin.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import triton

from vllm_ascend_triton.kernels.moe_sort.jit import _sort_count_kernel, _sort_scatter_kernel
from vllm_ascend_triton.runtime.configs import ShapeCache, lookup_config
from vllm_ascend_triton.runtime.device import DeviceInfo, current_device
from vllm_ascend_triton.runtime.launch import LaunchSpec, checks_enabled, persistent_grid
from vllm_ascend_triton.runtime.ub import tile_elements

# Live [BLOCK_N, BLOCK_B] int32/fp32 tiles of the count and scatter loops (one-hot, its cumsum,
# their product, a temporary); an expert map adds a one-hot over the id lanes and its product.
_LIVE_TILES = 4
_LIVE_TILES_WITH_MAP = 6
# Sort plans per problem size, for the current device (see `runtime.configs.ShapeCache`).
_PLANS = ShapeCache("moe_sort")


def bin_lanes(num_bins: int) -> int:
    """Lanes of the bin axis for `num_bins` bins.

    Args:
        num_bins: bins (experts) of the sort.

    Returns:
        A power of two >= max(8, num_bins) (8 int32 lanes = 32 bytes, the DMA alignment).
    """
    return max(8, triton.next_power_of_2(num_bins))


@dataclasses.dataclass(frozen=True)
class SortPlan:
    """What the count and scatter launches share: the same runs of route tiles."""

    numel: int
    num_ids: int  # ids outside [0, num_ids) are dropped
    num_bins: int
    has_map: bool
    config: dict
    runs: int  # programs of the count and scatter grids = rows of the scratch
    tiles_per_program: int

    @property
    def block_b(self) -> int:
        return bin_lanes(self.num_bins)

    @property
    def block_i(self) -> int:
        return triton.next_power_of_2(self.num_ids) if self.has_map else 1

    @property
    def scratch_bytes(self) -> int:
        return self.runs * self.num_bins * 4


def plan_sort(
    numel: int, num_ids: int, num_bins: int, has_map: bool, device: DeviceInfo | None = None
) -> SortPlan:
    """The launch plan the count and scatter share (their grid and runs of route tiles).

    Args:
        numel: routes to sort (flattened `topk_ids`).
        num_ids: ids outside `[0, num_ids)` are dropped.
        num_bins: bins (global experts for align, local experts under a map for permute).
        has_map: ids go through an expert map (`num_ids` lanes) to their bin.
        device: plan for this device (default: the current one, e.g. a `plan_for(SKU)` block).

    Returns:
        A frozen `SortPlan` (tuned `BLOCK_N`, runs = programs = scratch rows, tiles per program).
    """
    plan_key = (numel, num_ids, num_bins, has_map)
    if device is None:
        plan = _PLANS.get(plan_key)
        if plan is not None:
            return plan
    dev = device or current_device()
    widest = max(bin_lanes(num_bins), triton.next_power_of_2(num_ids) if has_map else 1)
    live = _LIVE_TILES_WITH_MAP if has_map else _LIVE_TILES
    default = {"BLOCK_N": max(8, min(256, tile_elements(live, 4, device=dev) // widest))}
    key = {"num_bins": num_bins, "numel": numel, "has_map": has_map}
    config = lookup_config(dev.sku.name, "moe_sort_count", key, default)
    num_tiles = triton.cdiv(max(numel, 1), config["BLOCK_N"])
    (runs,) = persistent_grid(num_tiles, device=dev)
    plan = SortPlan(numel, num_ids, num_bins, has_map, config, runs, triton.cdiv(num_tiles, runs))
    return _PLANS.put(plan_key, plan) if device is None else plan


def sort_scratch_bytes(
    numel: int, num_bins: int, has_map: bool = False, device: DeviceInfo | None = None
) -> int:
    """Bytes of the sort's scratch (one int32 histogram row per program) for a problem size.

    Args:
        numel: routes. num_bins: bins (ids = bins). has_map: through an expert map. device: as
        `plan_sort`.

    Returns:
        `runs * num_bins * 4`.
    """
    return plan_sort(numel, num_bins, num_bins, has_map, device).scratch_bytes


def _count_args(plan: SortPlan) -> dict[str, Any]:
    """The count launch's arguments, its tensors placeholders (`SortLaunches.count_into` fills them)."""
    return {
        "ids_ptr": None,
        "map_ptr": None,
        "counts_ptr": None,
        "numel": plan.numel,
        "num_ids": plan.num_ids,
        "num_bins": plan.num_bins,
        "tiles_per_program": plan.tiles_per_program,
    }


def _count_spec(plan: SortPlan, args: dict[str, Any]) -> LaunchSpec:
    return LaunchSpec(
        name="moe_sort_count",
        kernel=_sort_count_kernel,
        grid=(plan.runs,),
        args=args,
        constexprs=dict(
            HAS_MAP=plan.has_map, BLOCK_N=plan.config["BLOCK_N"], BLOCK_B=plan.block_b, BLOCK_I=plan.block_i
        ),
        config=plan.config,
    )


def _scatter_args(plan: SortPlan, block_size: int) -> dict[str, Any]:
    """The scatter launch's arguments, its tensors placeholders (`SortLaunches.scatter` fills them)."""
    return {
        "ids_ptr": None,
        "map_ptr": None,
        "counts_ptr": None,
        "sorted_ptr": None,
        "inv_ptr": None,
        "num_runs": plan.runs,
        "numel": plan.numel,
        "num_ids": plan.num_ids,
        "num_bins": plan.num_bins,
        "block_size": block_size,
        "tiles_per_program": plan.tiles_per_program,
    }


def _scatter_spec(plan: SortPlan, args: dict[str, Any], write_inv: bool) -> LaunchSpec:
    return LaunchSpec(
        name="moe_sort_scatter",
        kernel=_sort_scatter_kernel,
        grid=(plan.runs,),
        args=args,
        constexprs=dict(
            HAS_MAP=plan.has_map,
            WRITE_INV=write_inv,
            BLOCK_N=plan.config["BLOCK_N"],
            BLOCK_B=plan.block_b,
            BLOCK_I=plan.block_i,
        ),
        config=plan.config,
    )


@dataclasses.dataclass(frozen=True)
class SortLaunches:
    """The count and scatter launches of one `SortPlan`, built and validated once (`sort_launches`):
    a serving call only hands its tensors over."""

    plan: SortPlan
    block_size: int
    count_spec: LaunchSpec  # templates: their tensor arguments are placeholders
    scatter_spec: LaunchSpec

    def count(self, ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
        """Launch the histogram (`moe_sort_count`).

        Args:
            ids: int32/int64 route ids (any shape, contiguous, `plan.numel` of them), on the launch
                device (validated by the caller).
            expert_map: the map when `plan.has_map`, else None.

        Returns:
            The int32 `[plan.runs, plan.num_bins]` scratch the layout and scatter launches read.
        """
        plan = self.plan
        counts = torch.empty(plan.runs, plan.num_bins, dtype=torch.int32, device=ids.device)
        self.count_into(ids, expert_map, counts)
        return counts

    def count_into(self, ids: torch.Tensor, expert_map: torch.Tensor | None, counts: torch.Tensor) -> None:
        """As `count`, into the caller's contiguous int32 scratch of `plan.runs * plan.num_bins`
        elements (any shape).

        Args:
            ids, expert_map: as `count`'s. counts: the scratch, written.
        """
        args = {
            **self.count_spec.args,
            "ids_ptr": ids,
            "map_ptr": expert_map if expert_map is not None else ids,  # read only with HAS_MAP
            "counts_ptr": counts,
        }
        self.count_spec.with_args(args).launch()

    def scatter(
        self,
        ids: torch.Tensor,
        expert_map: torch.Tensor | None,
        counts: torch.Tensor,
        sorted_out: torch.Tensor,
        inv_out: torch.Tensor | None,
    ) -> None:
        """Launch the scatter (`moe_sort_scatter`), with the counts of `count`.

        Args:
            ids, expert_map: exactly as given to `count`.
            counts: its scratch.
            sorted_out: int32, at least the padded total; `sorted_out[slot] = route` for every kept
                route (other entries are left as the caller's layout launch filled them); every
                bin's start is padded to a multiple of `block_size` (1 for permute).
            inv_out: int32 `[numel]`, `inv_out[route] = slot` (-1 for dropped routes), given exactly
                when the launches were built with `write_inv`.

        Returns:
            None (writes `sorted_out` and `inv_out` in place).
        """
        args = {
            **self.scatter_spec.args,
            "ids_ptr": ids,
            "map_ptr": expert_map if expert_map is not None else ids,
            "counts_ptr": counts,
            "sorted_ptr": sorted_out,
            "inv_ptr": inv_out if inv_out is not None else sorted_out,  # written only with WRITE_INV
        }
        self.scatter_spec.with_args(args).launch()


def sort_launches(plan: SortPlan, block_size: int, write_inv: bool) -> SortLaunches:
    """The count and scatter launches of `plan`, validated once, for a caller to cache per shape.

    Args:
        plan: from `plan_sort`.
        block_size: every bin's start is padded to a multiple of it (1 for permute).
        write_inv: whether the scatter writes the inverse permutation.

    Returns:
        A frozen `SortLaunches` holding no tensors.
    """
    return SortLaunches(
        plan,
        block_size,
        _count_spec(plan, _count_args(plan)),
        _scatter_spec(plan, _scatter_args(plan, block_size), write_inv),
    )


def check_expert_map_values(expert_map: torch.Tensor, bound: int) -> None:
    """With input checks on (a device sync on an NPU), every `expert_map` entry is -1 or in `[0, bound)`.

    Args:
        expert_map: int32/int64 global -> local expert ids.
        bound: local experts.

    Raises:
        ValueError: an entry outside `[-1, bound)`, saying so when it does not even fit int32. With
            checks off nothing is checked and the kernels treat such entries as -1.
    """
    if expert_map.numel() == 0 or not checks_enabled():
        return
    lo, hi = int(expert_map.min()), int(expert_map.max())
    if lo < -1 or hi >= bound:
        why = " (they do not even fit int32)" if lo < -(2**31) or hi >= 2**31 else ""
        raise ValueError(f"expert_map values must be -1 or in [0, {bound}), got [{lo}, {hi}]{why}")
