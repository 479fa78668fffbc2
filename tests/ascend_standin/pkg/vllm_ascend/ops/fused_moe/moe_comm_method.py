"""Stand-in for vllm_ascend/ops/fused_moe/moe_comm_method.py (182b75e): the experts result."""

from dataclasses import dataclass

import torch


@dataclass
class FusedExpertsResult:
    routed_out: torch.Tensor
    group_list_type: int = 1
    expert_tokens: torch.Tensor | None = None
