"""Torch references of the fused_moe family, and the result type of `moe_permute`."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MoePermuteResult(NamedTuple):
    """What `moe_permute` returns (see the package docstring for the exact layout)."""

    permuted_hidden_states: torch.Tensor  # [M*k, H], hidden dtype
    tokens_per_expert: torch.Tensor  # int32 [L]
    expert_first_token_offset: torch.Tensor  # int32 [L + 1]
    inv_permuted_idx: torch.Tensor  # int32 [M, k], -1 = non-local expert
    permuted_idx: torch.Tensor  # int32 [M*k], source slot t*k+j, -1 = unused row


def _local_ids_ref(
    topk_ids: torch.Tensor, expert_map: torch.Tensor | None, num_experts: int, num_local: int
) -> torch.Tensor:
    """Local expert of every slot, -1 = dropped: ids outside [0, num_experts) and map entries
    outside [0, num_local) (the kernels' contract with input checks off)."""
    ids = topk_ids.long().cpu()
    ids = torch.where((ids >= 0) & (ids < num_experts), ids, -1)
    if expert_map is not None:
        emap = expert_map.long().cpu()
        ids = torch.where(ids >= 0, emap[ids.clamp(min=0)], -1)
    return torch.where((ids >= 0) & (ids < num_local), ids, -1)


def moe_permute_ref(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    num_local_experts: int | None = None,
) -> MoePermuteResult:
    """Plain-torch moe_permute (stable sort of the flat slots by local expert id)."""
    num_tokens, topk = topk_ids.shape
    num_local = num_local_experts or (int(expert_map.max()) + 1 if expert_map is not None else num_experts)
    local = _local_ids_ref(topk_ids, expert_map, num_experts, num_local).flatten()
    key = torch.where(local >= 0, local, num_local)
    order = torch.sort(key, stable=True).indices
    n_valid = int((local >= 0).sum())
    counts = torch.bincount(local[local >= 0], minlength=num_local).to(torch.int32)
    offsets = torch.zeros(num_local + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(counts, 0)
    permuted_idx = torch.full((num_tokens * topk,), -1, dtype=torch.int32)
    permuted_idx[:n_valid] = order[:n_valid].to(torch.int32)
    inv = torch.full((num_tokens * topk,), -1, dtype=torch.int32)
    inv[order[:n_valid]] = torch.arange(n_valid, dtype=torch.int32)
    permuted = torch.zeros(num_tokens * topk, hidden_states.shape[1], dtype=hidden_states.dtype)
    permuted[:n_valid] = hidden_states.cpu()[order[:n_valid] // topk]
    return MoePermuteResult(permuted, counts, offsets, inv.view(num_tokens, topk), permuted_idx)


def moe_unpermute_ref(
    permuted_out: torch.Tensor, topk_weights: torch.Tensor, inv_permuted_idx: torch.Tensor
) -> torch.Tensor:
    inv = inv_permuted_idx.long()
    used = (inv >= 0) & (inv < permuted_out.shape[0])  # other entries are skipped
    rows = permuted_out.float()[torch.where(used, inv, 0)]  # [M, k, H]
    terms = torch.where(used[..., None], topk_weights.float()[..., None] * rows, 0.0)
    return terms.sum(1).to(permuted_out.dtype)


def fused_experts_ref(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None = None,
    global_num_experts: int | None = None,
) -> torch.Tensor:
    """Loop over experts in fp32; the SiLU-and-mul output is rounded to the input dtype as vLLM does.
    Dropped slots (out-of-range ids or map entries) contribute nothing."""
    dtype = hidden_states.dtype
    x = hidden_states.float()
    inter = w13.shape[1] // 2
    num_local = w13.shape[0]
    if global_num_experts is None:
        global_num_experts = expert_map.shape[0] if expert_map is not None else num_local
    local = _local_ids_ref(topk_ids, expert_map, global_num_experts, num_local)
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        tok, slot = torch.nonzero(local == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        h = x[tok] @ w13[e].float().t()
        act = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]).to(dtype).float()
        y = (act @ w2[e].float().t()).to(dtype).float()
        out.index_add_(0, tok, topk_weights[tok, slot].float()[:, None] * y)
    return out.to(dtype)
