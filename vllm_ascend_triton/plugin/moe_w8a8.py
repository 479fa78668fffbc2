"""vLLM's compressed-tensors W8A8 int8 MoE method (channel-wise int8 weights, dynamic per-token
int8 activations), with the expert MLP on our kernels.

vLLM builds ``CompressedTensorsW8A8Int8MoEMethod`` for every MoE layer of a compressed-tensors
checkpoint whose experts are int8 per channel with dynamic per-token int8 inputs; it looks the
class up in its module at the time it builds a layer. :func:`install` (called when the plugin
registers on our platforms) puts our subclass there, so those layers get it:

- weights stay exactly in vLLM's layout (``create_weights`` is vLLM's): ``w13_weight`` int8
  ``[E, 2I, H]``, ``w2_weight`` int8 ``[E, H, I]``, ``w13_weight_scale`` fp32 ``[E, 2I, 1]``,
  ``w2_weight_scale`` fp32 ``[E, H, 1]``; vLLM's kernel conversion (the CPU VNNI prepack) is
  skipped for the layers we run, since our kernels read that layout directly;
- routing is vLLM's (the method is modular: vLLM's router selects the experts, with every
  routing variant it supports), and ``apply`` runs ``vat::fused_experts_w8a8`` (per-token quant
  fused with the permute, int8 grouped GEMMs with int32 accumulation, dequant + SiLU-and-mul,
  requant, down GEMM, weighted combine; ``kernels.fused_moe.w8a8``), with the layer's
  ``expert_map`` under expert parallelism.

Layers this does not cover keep vLLM's method completely (one log line per layer and reason,
decided before the first forward): the cases of ``plugin.moe.config_unsupported`` (non-SiLU or
biased experts, LoRA, activation dtypes other than fp16/bf16/fp32, EPLB), data-parallel or
all-to-all dispatch (vLLM's prepare/finalize kernels do that), router weights applied on the
input, SwiGLU clamp/alpha parameters, and weights or scales not in the layout above. Our
subclass also serves hosts where vLLM has no int8 MoE backend for the layer at all (a CPU without
AMX): vLLM's constructor refuses those, ours runs them if our kernels support the layer.

The custom ops, registered through ``plugin.custom_ops`` (``register_custom_ops``):

- ``vat::dynamic_per_token_quant(x) -> (q, scale)``
- ``vat::fused_experts_w8a8(hidden_states, w13, w2, w13_scale, w2_scale, topk_weights, topk_ids,
  activation, expert_map?, global_num_experts) -> out``

Each bumps its counter (``plugin.counters``): ``dynamic_per_token_quant`` per quant launch
(``fused_experts_w8a8`` runs two: the input and the intermediate) and ``fused_experts_w8a8`` per
expert MLP; the test mutation hook (``VAT_PLUGIN_MUTATE=moe:<factor>``) scales the expert output.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vllm_ascend_triton.plugin import counters, mutate
from vllm_ascend_triton.plugin.moe import config_unsupported

logger = logging.getLogger(f"vllm.{__name__}")

METHOD_MODULE = (
    "vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors_moe."
    "compressed_tensors_moe_w8a8_int8"
)
METHOD_NAME = "CompressedTensorsW8A8Int8MoEMethod"
# Counter names (the op names, as the counts files show them).
QUANT_COUNTER = "dynamic_per_token_quant"
EXPERTS_COUNTER = "fused_experts_w8a8"


# --- custom ops ----------------------------------------------------------------------------------


def _dynamic_per_token_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from vllm_ascend_triton.kernels import dynamic_per_token_quant

    out = dynamic_per_token_quant(x)
    counters.bump(QUANT_COUNTER)
    return out


def _quant_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.numel() // x.shape[-1] if x.dim() else 1
    return torch.empty_like(x, dtype=torch.int8), torch.empty((rows, 1), dtype=torch.float32, device=x.device)


def _fused_experts_w8a8(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    expert_map: torch.Tensor | None = None,
    global_num_experts: int = -1,
) -> torch.Tensor:
    from vllm_ascend_triton.kernels import fused_experts_w8a8

    out = fused_experts_w8a8(
        hidden_states,
        w13,
        w2,
        w13_scale,
        w2_scale,
        topk_weights,
        topk_ids,
        activation=activation,
        expert_map=expert_map,
        global_num_experts=global_num_experts if global_num_experts > 0 else None,  # -1: the default
    )
    counters.bump(QUANT_COUNTER, 2)
    counters.bump(EXPERTS_COUNTER)
    if mutate.ACTIVE:
        mutate.apply("moe", out)
    return out


def _fused_experts_w8a8_fake(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.empty_like(hidden_states)


def register_custom_ops() -> None:
    """Register ``vat::dynamic_per_token_quant`` and ``vat::fused_experts_w8a8`` (idempotent)."""
    from vllm_ascend_triton.plugin.custom_ops import register_op

    register_op("dynamic_per_token_quant", _dynamic_per_token_quant, fake=_quant_fake)
    register_op("fused_experts_w8a8", _fused_experts_w8a8, fake=_fused_experts_w8a8_fake)


# --- what runs on our kernels ----------------------------------------------------------------------


def moe_config_unsupported(moe: Any) -> str | None:
    """Why a W8A8 MoE layer with this ``FusedMoEConfig`` cannot run on our kernels, or None."""
    reason = config_unsupported(moe)
    if reason is not None:
        return reason
    parallel = getattr(moe, "moe_parallel_config", None)
    if parallel is not None:
        if getattr(parallel, "use_all2all_kernels", False):
            return "all-to-all expert dispatch (vLLM's prepare/finalize kernels)"
        if getattr(parallel, "dp_size", 1) > 1:
            return "data-parallel dispatch (vLLM's prepare/finalize kernels)"
    return None


def layer_unsupported(layer: Any) -> str | None:
    """Why this routed-experts layer (weights loaded) cannot run on our kernels, or None."""
    if getattr(layer, "apply_router_weight_on_input", False):
        return "router weights applied on the input"
    for name in ("swiglu_limit", "swiglu_alpha", "swiglu_beta"):
        if getattr(layer, name, None) is not None:
            return f"{name} set"
    w13, w2 = layer.w13_weight, layer.w2_weight
    if w13.dtype != torch.int8 or w2.dtype != torch.int8 or w13.dim() != 3 or w2.dim() != 3:
        return (
            f"weights {w13.dtype} {tuple(w13.shape)} / {w2.dtype} {tuple(w2.shape)} (int8 [E, N, K] expected)"
        )
    for name, rows in (("w13_weight_scale", w13.shape[1]), ("w2_weight_scale", w2.shape[1])):
        scale = getattr(layer, name, None)
        if scale is None or scale.dtype != torch.float32 or tuple(scale.shape) != (w13.shape[0], rows, 1):
            return f"{name} not fp32 [E, {rows}, 1] (per output channel)"
    return None


def make_method_class() -> type:
    """Our subclass of vLLM's ``CompressedTensorsW8A8Int8MoEMethod`` (created once per process)."""
    global _METHOD_CLS
    if _METHOD_CLS is not None:
        return _METHOD_CLS
    from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors_moe import (
        compressed_tensors_moe_w8a8_int8 as ct_int8,
    )

    base = getattr(ct_int8, "_vat_original_method", getattr(ct_int8, METHOD_NAME))

    class VatW8A8Int8MoEMethod(base):  # type: ignore[misc, valid-type]
        """The W8A8 expert MLP through vllm-ascend-triton kernels (see module docstring)."""

        def __init__(
            self, weight_quant: Any, input_quant: Any, moe: Any, layer_name: str | None = None
        ) -> None:
            self._vat_reason = moe_config_unsupported(moe)
            try:
                super().__init__(weight_quant, input_quant, moe, layer_name)
            except NotImplementedError as exc:
                # vLLM has no int8 MoE backend here (e.g. a CPU without AMX): ours can still run
                # the layer; vLLM's scheme checks ran before its backend choice failed.
                if self._vat_reason is not None:
                    raise
                logger.info("vllm-ascend-triton: no vLLM int8 MoE backend for this layer (%s)", exc)
                FusedMoEMethodBase.__init__(self, moe)
                self.weight_quant, self.input_quant = weight_quant, input_quant
                self.static_input_scales = False
                self.int8_backend, self.experts_cls = None, None
            if self._vat_reason is not None:
                logger.warning("vllm-ascend-triton: W8A8 MoE layer keeps vLLM's method: %s", self._vat_reason)

        @property
        def _vat_active(self) -> bool:
            return self._vat_reason is None

        @property
        def is_monolithic(self) -> bool:
            return False if self._vat_active else super().is_monolithic

        def process_weights_after_loading(self, layer: Any) -> None:
            counters.label_dp_rank_from_vllm()
            if self._vat_active:
                self._vat_reason = layer_unsupported(layer)
                if self._vat_reason is not None:
                    logger.warning(
                        "vllm-ascend-triton: W8A8 MoE layer %s keeps vLLM's method: %s",
                        getattr(layer, "layer_name", "?"),
                        self._vat_reason,
                    )
                    if self.experts_cls is None:
                        raise NotImplementedError(
                            f"W8A8 MoE layer: no vLLM int8 backend and ours cannot run it: {self._vat_reason}"
                        )
            if not self._vat_active:
                super().process_weights_after_loading(layer)
                return
            # No conversion to a vLLM kernel layout and no vLLM MoE kernel for this layer: ours
            # read the checkpoint layout. The quant config is what vLLM's own method reports.
            self.moe_quant_config = self.get_fused_moe_quant_config(layer)

        def apply(
            self,
            layer: Any,
            x: torch.Tensor,
            topk_weights: torch.Tensor,
            topk_ids: torch.Tensor,
            shared_experts: Any,
            shared_experts_input: torch.Tensor | None,
        ) -> torch.Tensor:
            if not self._vat_active:
                return super().apply(layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input)
            # Shared experts: without a vLLM modular kernel they cannot overlap with it, so vLLM's
            # runner runs them before this call (SharedExpertsOrder.NO_OVERLAP).
            return torch.ops.vat.fused_experts_w8a8(
                x,
                layer.w13_weight,
                layer.w2_weight,
                layer.w13_weight_scale,
                layer.w2_weight_scale,
                topk_weights,
                topk_ids,
                "silu",
                layer.expert_map,
                int(layer.global_num_experts),
            )

    VatW8A8Int8MoEMethod.__name__ = VatW8A8Int8MoEMethod.__qualname__ = "VatW8A8Int8MoEMethod"
    _METHOD_CLS = VatW8A8Int8MoEMethod
    return _METHOD_CLS


def install() -> list[str]:
    """Make vLLM build our subclass for compressed-tensors W8A8 int8 MoE layers in this process
    (idempotent). Returns what was installed, for the plugin's registration log."""
    register_custom_ops()
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors_moe import (
        compressed_tensors_moe_w8a8_int8 as ct_int8,
    )

    cls = make_method_class()
    if getattr(ct_int8, METHOD_NAME) is not cls:
        ct_int8._vat_original_method = getattr(ct_int8, "_vat_original_method", getattr(ct_int8, METHOD_NAME))
        setattr(ct_int8, METHOD_NAME, cls)
    return [METHOD_NAME]


_METHOD_CLS: type | None = None
