"""vLLM's unquantized fused-MoE method, with routing and expert compute through our kernels.

Registered under vLLM's class name ``UnquantizedFusedMoEMethod`` (``CustomOp.register_oot``),
so it only ever replaces the *unquantized* method: quantized layers build their own
quantization methods and stay vLLM's.

The replacement is a monolithic method: vLLM's MoE runner hands it the router logits (after its
own DP/EP dispatch, before its combine, and it applies an output-side routed scaling factor
itself), and it runs

1. routing: :func:`~vllm_ascend_triton.kernels.grouped_topk` when the layer groups experts
   (DeepSeek-V3 / GLM-4.5 style: sigmoid or softmax scores, correction bias, routed scaling
   factor), else :func:`~vllm_ascend_triton.kernels.fused_topk`;
2. experts: :func:`~vllm_ascend_triton.kernels.fused_experts` (permute, grouped GEMMs with
   SiLU-and-mul, weighted combine), with the layer's ``expert_map`` under expert parallelism;

each through its ``vat::`` custom op (``custom_ops.py``), one opaque node under vLLM's compile mode.

Layers this does not cover keep vLLM's own code path completely (one log line per layer, decided
before the first forward): non-SiLU or biased experts, LoRA, custom routing functions, router
weights applied on the input, SwiGLU clamp/alpha parameters, EPLB, dtypes other than
fp16/bf16/fp32. Weights stay in vLLM's layout (``w13 [E, 2I, H]``, ``w2 [E, H, I]``); vLLM's CPU
prepacking is skipped for the layers we run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vllm_ascend_triton.plugin import counters, custom_ops

logger = logging.getLogger(f"vllm.{__name__}")

MOE_OP_NAME = "UnquantizedFusedMoEMethod"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _activation_name(activation: Any) -> str:
    return str(getattr(activation, "value", activation))


def config_unsupported(moe: Any) -> str | None:
    """Why a layer with this ``FusedMoEConfig`` cannot run on our kernels, or None."""
    if _activation_name(moe.activation) != "silu":
        return f"activation {_activation_name(moe.activation)!r} (only gated SiLU)"
    if getattr(moe, "has_bias", False):
        return "expert biases"
    if getattr(moe, "is_lora_enabled", False):
        return "LoRA"
    if getattr(moe, "in_dtype", torch.float16) not in _DTYPES:
        return f"activation dtype {moe.in_dtype}"
    parallel = getattr(moe, "moe_parallel_config", None)
    if parallel is not None and getattr(parallel, "enable_eplb", False):
        return "EPLB (logical -> physical expert maps)"
    return None


def layer_unsupported(layer: Any) -> str | None:
    """Why this routed-experts layer cannot run on our kernels, or None."""
    if getattr(layer, "custom_routing_function", None) is not None:
        return "custom routing function"
    if layer.scoring_func not in ("softmax", "sigmoid"):
        return f"scoring function {layer.scoring_func!r}"
    if getattr(layer, "apply_router_weight_on_input", False):
        return "router weights applied on the input"
    for name in ("swiglu_limit", "swiglu_alpha", "swiglu_beta"):
        if getattr(layer, name, None) is not None:
            return f"{name} set"
    if getattr(layer, "routing_sink", None) is not None:
        return "routing sink"
    if layer.w13_weight.dtype not in _DTYPES:
        return f"weight dtype {layer.w13_weight.dtype}"
    return None


def make_method_class() -> type:
    """Our subclass of vLLM's ``UnquantizedFusedMoEMethod`` (created once per process)."""
    global _METHOD_CLS
    if _METHOD_CLS is not None:
        return _METHOD_CLS
    custom_ops.register_all()
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod,
    )

    class VatUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):
        """Routing + expert MLP through vllm-ascend-triton kernels (see module docstring)."""

        def __init__(self, moe: Any) -> None:
            super().__init__(moe)
            self._vat_reason = config_unsupported(moe)
            if self._vat_reason is not None:
                logger.warning(
                    "vllm-ascend-triton: MoE layer keeps vLLM's unquantized method: %s", self._vat_reason
                )

        @property
        def _vat_active(self) -> bool:
            return self._vat_reason is None

        @property
        def is_monolithic(self) -> bool:
            return True if self._vat_active else super().is_monolithic

        def process_weights_after_loading(self, layer: Any) -> None:
            counters.label_dp_rank_from_vllm()
            if self._vat_active:
                self._vat_reason = layer_unsupported(layer)
                if self._vat_reason is not None:
                    logger.warning(
                        "vllm-ascend-triton: MoE layer %s keeps vLLM's unquantized method: %s",
                        getattr(layer, "layer_name", "?"),
                        self._vat_reason,
                    )
            if not self._vat_active:
                super().process_weights_after_loading(layer)
                return
            # vLLM's base hook only; no conversion to a vLLM kernel layout (our kernels read
            # the checkpoint layout), so no vLLM MoE kernel is built for this layer.
            super(UnquantizedFusedMoEMethod, self).process_weights_after_loading(layer)

        def apply_monolithic(
            self,
            layer: Any,
            x: torch.Tensor,
            router_logits: torch.Tensor,
            input_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            if not self._vat_active:
                return super().apply_monolithic(layer, x, router_logits, input_ids)
            num_groups = layer.num_expert_group or 1
            scale = float(layer.routed_scaling_factor)
            if layer.use_grouped_topk and num_groups > 1:
                weights, ids = torch.ops.vat.grouped_topk(
                    router_logits,
                    layer.top_k,
                    layer.renormalize,
                    num_groups,
                    layer.topk_group or num_groups,
                    layer.scoring_func,
                    layer.e_score_correction_bias,
                    scale,
                )
            else:
                weights, ids = torch.ops.vat.fused_topk(
                    router_logits,
                    layer.top_k,
                    layer.renormalize,
                    layer.scoring_func,
                    layer.e_score_correction_bias,
                    scale,
                )
            return torch.ops.vat.fused_experts(
                x,
                layer.w13_weight,
                layer.w2_weight,
                weights,
                ids,
                "silu",
                layer.expert_map,
                layer.global_num_experts if layer.global_num_experts is not None else -1,
            )

    _METHOD_CLS = VatUnquantizedFusedMoEMethod
    return _METHOD_CLS


_METHOD_CLS: type | None = None
