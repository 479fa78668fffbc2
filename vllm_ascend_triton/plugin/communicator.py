"""Collectives for vLLM's data/expert-parallel MoE on CPU processes (gloo).

Kept apart from ``platform.py``: vLLM imports the platform class while ``vllm.platforms`` is
still being initialised, and ``vllm.distributed`` needs the resolved platform; vLLM imports this
module by its path only when it builds process groups.
"""

from __future__ import annotations

import torch
from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator


class GlooCpuCommunicator(CpuCommunicator):
    """vLLM's CPU communicator plus ``all_gatherv`` / ``reduce_scatterv`` over gloo.

    vLLM's naive DP/EP MoE dispatch all-gathers each rank's tokens (different counts per rank)
    and its combine reduce-scatters them back; the CPU communicator raises NotImplementedError
    for both. Gloo has no variable-size all-gather, so each rank pads to the largest count, and
    the reduce-scatter is an all-reduce followed by taking this rank's rows (exact, and cheap at
    the sizes a CPU runs).
    """

    def _sizes(self, sizes: list[int] | None, local: int) -> list[int]:
        if sizes is None:
            return [local] * self.world_size
        if len(sizes) != self.world_size:
            raise ValueError(f"sizes must have one entry per rank ({self.world_size}), got {sizes}")
        if sizes[self.rank_in_group] != local:
            raise ValueError(
                f"sizes[{self.rank_in_group}] = {sizes[self.rank_in_group]} but this rank holds {local} rows"
            )
        return list(sizes)

    def _all_gatherv_one(self, tensor: torch.Tensor, dim: int, sizes: list[int] | None) -> torch.Tensor:
        if dim < 0:
            dim += tensor.dim()
        rows = tensor.movedim(dim, 0)
        counts = self._sizes(sizes, rows.shape[0])
        padded = rows.new_zeros((max(counts),) + tuple(rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, padded, group=self.device_group)
        out = torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)], dim=0)
        return out.movedim(0, dim).contiguous()

    def all_gatherv(
        self,
        input_: torch.Tensor | list[torch.Tensor],
        dim: int = 0,
        sizes: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        if self.world_size == 1:
            return input_
        if isinstance(input_, list | tuple):
            return [self._all_gatherv_one(t, dim, sizes) for t in input_]
        return self._all_gatherv_one(input_, dim, sizes)

    def reduce_scatterv(
        self, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        if self.world_size == 1:
            return input_
        if dim < 0:
            dim += input_.dim()
        total = input_.movedim(dim, 0).contiguous().clone()
        if sizes is None:
            if total.shape[0] % self.world_size:
                raise ValueError(f"{total.shape[0]} rows do not split evenly over {self.world_size} ranks")
            sizes = [total.shape[0] // self.world_size] * self.world_size
        if len(sizes) != self.world_size or sum(sizes) != total.shape[0]:
            raise ValueError(f"sizes {sizes} must have {self.world_size} entries summing to {total.shape[0]}")
        torch.distributed.all_reduce(total, group=self.device_group)
        start = sum(sizes[: self.rank_in_group])
        mine = total[start : start + sizes[self.rank_in_group]]
        return mine.movedim(0, dim).contiguous()

    def reduce_scatter(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self.reduce_scatterv(input_, dim, None)
