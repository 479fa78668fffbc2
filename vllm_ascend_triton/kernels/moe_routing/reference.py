"""Torch references of the moe_routing family (the documented semantics, including ties and
non-finite logits)."""

from __future__ import annotations

import torch
import triton

_FLT_MAX = 3.4028234663852886e38


def max_num_tokens_padded(numel: int, block_size: int, num_experts: int, pad_sorted_ids: bool = False) -> int:
    """Length of `sorted_token_ids`, as vLLM's wrapper sizes it."""
    size = numel + num_experts * (block_size - 1)
    if pad_sorted_ids:
        size = triton.cdiv(size, block_size) * block_size
    if numel < num_experts:
        size = min(numel * block_size, size)
    return size


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
    """Torch reference of the layout vLLM's CUDA op produces (stable order within an expert); ids
    outside [0, num_experts) are skipped."""
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
        label = e if expert_map is None else int(expert_map[e])
        # Map entries outside [-1, num_experts) label their blocks -1 (the kernels' contract).
        expert_ids[start // block_size : (start + padded) // block_size] = (
            label if -1 <= label < num_experts else -1
        )
        start += padded
    return sorted_ids, expert_ids, torch.tensor([start], dtype=torch.int32)
