"""Stand-in for vllm_ascend/ops/rotary_embedding.py (182b75e): its four rope classes, subclasses
of vLLM's, with their own device forward (here vLLM's native rope, counted)."""

from vllm.model_executor.layers.rotary_embedding import (
    DeepseekScalingRotaryEmbedding,
    MRotaryEmbedding,
    RotaryEmbedding,
    YaRNScalingRotaryEmbedding,
)

from vllm_ascend import standin_counts


class _AscendForward:
    def forward_oot(self, *args, **kwargs):
        standin_counts.bump("rope")
        return self.forward_native(*args, **kwargs)

    forward_cpu = forward_oot


class AscendRotaryEmbedding(_AscendForward, RotaryEmbedding):
    pass


class AscendMRotaryEmbedding(_AscendForward, MRotaryEmbedding):
    pass


class AscendYaRNRotaryEmbedding(_AscendForward, YaRNScalingRotaryEmbedding):
    pass


class AscendDeepseekScalingRotaryEmbedding(_AscendForward, DeepseekScalingRotaryEmbedding):
    pass
