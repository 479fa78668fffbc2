"""Stand-in for ``register_ascend_customop`` (vllm_ascend/utils.py, 182b75e): registers its op
classes with ``CustomOp.register_oot`` once per process (vLLM asserts on a duplicate name).
Mirrored names: the four rope classes, ``MoERunner`` and ``RoutedExperts`` (the real one also
registers norms, activations, linears, embeddings, MLA and more, which our package never touches).
"""

_ASCEND_CUSTOMOP_IS_REIGISTERED = False
REGISTERED_ASCEND_OPS: dict = {}


def register_ascend_customop(vllm_config=None) -> None:
    global _ASCEND_CUSTOMOP_IS_REIGISTERED
    if _ASCEND_CUSTOMOP_IS_REIGISTERED:
        return
    from vllm.model_executor.custom_op import CustomOp

    from vllm_ascend.ops.fused_moe.fused_moe import AscendMoERunner
    from vllm_ascend.ops.fused_moe.routed_experts import AscendRoutedExperts
    from vllm_ascend.ops.rotary_embedding import (
        AscendDeepseekScalingRotaryEmbedding,
        AscendMRotaryEmbedding,
        AscendRotaryEmbedding,
        AscendYaRNRotaryEmbedding,
    )

    REGISTERED_ASCEND_OPS.update(
        {
            "RotaryEmbedding": AscendRotaryEmbedding,
            "MRotaryEmbedding": AscendMRotaryEmbedding,
            "YaRNScalingRotaryEmbedding": AscendYaRNRotaryEmbedding,
            "DeepseekScalingRotaryEmbedding": AscendDeepseekScalingRotaryEmbedding,
            "MoERunner": AscendMoERunner,
            "RoutedExperts": AscendRoutedExperts,
        }
    )
    for name, op_cls in REGISTERED_ASCEND_OPS.items():
        CustomOp.register_oot(_decorated_op_cls=op_cls, name=name)
    _ASCEND_CUSTOMOP_IS_REIGISTERED = True
