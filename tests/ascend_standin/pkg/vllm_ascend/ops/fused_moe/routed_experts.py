"""Stand-in for vllm_ascend/ops/fused_moe/routed_experts.py (182b75e).

Mirrored: ``AscendRoutedExperts.__init__`` replaces the unquantized method vLLM built with
``AscendUnquantizedFusedMoEMethod`` (``_replace_quant_method``; quantized layers keep theirs);
``forward_impl`` selects experts with ``_select_experts`` (through the router the runner handed
it; its profile run forces random balanced ids) and calls ``quant_method.apply(layer, x,
topk_weights, topk_ids, ...)``, which returns a ``FusedExpertsResult``; its method transposes the
expert weights after loading. Not mirrored: MoE communication (all-gather / MC2 / all-to-all:
one process here), EPLB, LoRA, NZ weight formats.
"""

import torch
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

from vllm_ascend import standin_counts
from vllm_ascend.ops.fused_moe.moe_comm_method import FusedExpertsResult


class AscendUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):
    def __init__(self, moe=None, tid2eid=None):
        super().__init__(moe=moe)
        self.tid2eid = tid2eid
        self.dynamic_eplb = False

    @property
    def is_monolithic(self) -> bool:
        return False

    def process_weights_after_loading(self, layer):
        super(UnquantizedFusedMoEMethod, self).process_weights_after_loading(layer)
        # Its grouped matmuls take [E, H, 2I] and [E, I, H].
        layer.w13_weight.data = layer.w13_weight.data.transpose(1, 2).contiguous()
        layer.w2_weight.data = layer.w2_weight.data.transpose(1, 2).contiguous()

    def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
        standin_counts.bump("experts")
        out = torch.zeros_like(x)
        inter = layer.w13_weight.shape[2] // 2
        for e in topk_ids.unique().tolist():
            rows, slot = (topk_ids == e).nonzero(as_tuple=True)
            h = x[rows] @ layer.w13_weight[e]
            h = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
            out.index_add_(0, rows, (h @ layer.w2_weight[e]) * topk_weights[rows, slot, None].to(x.dtype))
        return FusedExpertsResult(routed_out=out)


class AscendRoutedExperts(RoutedExperts):
    def __init__(self, *args, tid2eid=None, n_shared_experts: int = 0, **kwargs):
        object.__setattr__(self, "tid2eid", tid2eid)
        super().__init__(*args, **kwargs)
        if self.quant_config is None:
            self._replace_quant_method(AscendUnquantizedFusedMoEMethod(self.moe_config, tid2eid=self.tid2eid))
        self.router = None
        self.log2phy = None
        self.mix_placement = False

    def _select_experts(self, hidden_states, router_logits, enable_force_load_balance, input_ids=None):
        standin_counts.bump("routing")
        topk_weights, topk_ids = self.router.select_experts(
            hidden_states=hidden_states, router_logits=router_logits, input_ids=input_ids
        )
        if enable_force_load_balance:
            scores = torch.rand(topk_ids.shape[0], self.moe_config.num_experts, device=topk_ids.device)
            topk_ids = torch.argsort(scores, dim=1)[:, : topk_ids.shape[1]].to(topk_ids.dtype)
        return topk_weights.to(hidden_states.dtype), topk_ids

    def forward_impl(self, *, hidden_states, router_logits, input_ids=None):
        topk_weights, topk_ids = self._select_experts(
            hidden_states=hidden_states,
            router_logits=router_logits,
            enable_force_load_balance=False,
            input_ids=input_ids,
        )
        result = self.quant_method.apply(
            layer=self,
            x=hidden_states,
            topk_weights=topk_weights,
            topk_ids=topk_ids,
            shared_experts=None,
            shared_experts_input=None,
        )
        return result.routed_out
