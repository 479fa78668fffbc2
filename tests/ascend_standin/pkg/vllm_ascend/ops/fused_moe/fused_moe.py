"""Stand-in for ``AscendMoERunner`` (vllm_ascend/ops/fused_moe/fused_moe.py, 182b75e): hands its
router to the routed experts and runs them through ``AscendRoutedExperts.forward_impl`` instead
of vLLM's router + quant-method call."""

from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner
from vllm.model_executor.layers.fused_moe.runner.shared_experts import SharedExpertsOrder


class AscendMoERunner(MoERunner):
    def __init__(self, layer_name, moe_config, router, routed_experts, *args, **kwargs):
        super().__init__(layer_name, moe_config, router, routed_experts, *args, **kwargs)
        self.routed_experts.router = router

    def _apply_quant_method(
        self,
        hidden_states,
        router_logits,
        shared_experts_input,
        input_ids=None,
        shared_experts_overlapping=False,
    ):
        self._maybe_apply_shared_experts(shared_experts_input, SharedExpertsOrder.NO_OVERLAP)
        routed = self.routed_experts.forward_impl(
            hidden_states=hidden_states, router_logits=router_logits, input_ids=input_ids
        )
        if shared_experts_overlapping:
            self._shared_experts.wait()
        return (self._shared_experts.output if self._shared_experts is not None else None, routed)
