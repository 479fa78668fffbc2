"""Routing inputs shared by the MoE expert tests (fused_experts and its W8A8 twin)."""

from __future__ import annotations

import torch


def routing(m: int, e: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of random softmax scores: (fp32 weights [m, k], int32 ids [m, k])."""
    gen = torch.Generator().manual_seed(seed)
    weights, ids = torch.topk(torch.randn(m, e, generator=gen).softmax(-1), k)
    return weights.float(), ids.to(torch.int32)


def expert_map(e: int, num_local: int, seed: int = 1) -> torch.Tensor:
    """A scattered (not range-shaped) global -> local map with num_local local experts."""
    gen = torch.Generator().manual_seed(seed)
    local = torch.randperm(e, generator=gen)[:num_local].sort().values
    emap = torch.full((e,), -1, dtype=torch.int32)
    emap[local] = torch.randperm(num_local, generator=gen).to(torch.int32)
    return emap
