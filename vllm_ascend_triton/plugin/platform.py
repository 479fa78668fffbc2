"""The interpreter platform: vLLM's CPU platform running our kernels under Triton's interpreter.

Active only with ``VAT_PLATFORM=interpreter`` (``register.interpreter_platform``). It is vLLM's
``CpuPlatform`` (same workers, model runner, memory handling; ``is_cpu()`` stays true, so our
custom ops dispatch through their ``forward_cpu``) with four differences:

- attention: ``VAT_TRITON_ATTN`` for every layer it supports, vLLM's CPU backend for the rest
  (one log line naming the reason, e.g. an fp8 KV cache or a head size above 256);
- custom ops: our registered ops are switched on (``+<name>`` in ``compilation_config.custom_ops``);
  vLLM's compile mode is kept: Dynamo sees each of our kernels as one ``vat::`` custom op
  (``custom_ops.py``) and never traces into Triton's interpreter (on this CPU platform, without
  Inductor's C++ step only with ``VLLM_CPU_CI_ENV=1``, which makes vLLM use the eager backend);
- scheduler: ``BalanceScheduler`` when the balance switch is on and no class was chosen;
- collectives: ``communicator.GlooCpuCommunicator``, vLLM's CPU communicator plus the variable-size
  collectives that data/expert-parallel MoE needs (``all_gatherv``, ``reduce_scatterv``), which
  the CPU one lacks, built from plain gloo all-gather and all-reduce.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from vllm.platforms.cpu import CpuPlatform

from vllm_ascend_triton.plugin import register as plugin_register

logger = logging.getLogger(f"vllm.{__name__}")

_fallback_logged: set[str] = set()


def triton_helpers_compiled() -> bool:
    """Triton's own jit helpers (``tl.sum``, ``tl.cumsum``, ...) in this process are compiled-mode
    objects, so interpreted kernels that call them fail here (Triton was imported before the
    interpreter was selected)."""
    standard = sys.modules.get("triton.language.standard")
    return standard is not None and type(getattr(standard, "sum", None)).__name__ == "JITFunction"


class InterpreterPlatform(CpuPlatform):
    """vLLM's CPU platform with our attention backend, custom ops and gloo communicator."""

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: Any,
        attn_selector_config: Any,
        num_heads: int | None = None,
    ) -> str:
        from vllm_ascend_triton.plugin.attention_backend import BACKEND_NAME, unsupported_reason

        if plugin_register.part_enabled("attention"):
            if getattr(attn_selector_config, "use_mla", False):
                mla = _mla_backend_path(attn_selector_config)
                if mla is not None:
                    return mla
            reason = unsupported_reason(attn_selector_config)
            if reason is None:
                if selected_backend is not None and getattr(selected_backend, "name", None) != BACKEND_NAME:
                    logger.info("vllm-ascend-triton: %s requested; the interpreter platform runs %s",
                                selected_backend, BACKEND_NAME)  # fmt: skip
                return "vllm_ascend_triton.plugin.attention_backend.VatAttentionBackend"
            if reason not in _fallback_logged:
                _fallback_logged.add(reason)
                logger.warning("vllm-ascend-triton: attention layer keeps vLLM's CPU backend: %s", reason)
        return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        kept = mla_chunking_settings(vllm_config)
        super().check_and_update_config(vllm_config)
        if kept is not None:
            restore_mla_chunking(vllm_config, kept)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0" and triton_helpers_compiled():
            raise RuntimeError(
                "VAT_PLATFORM=interpreter with VLLM_ENABLE_V1_MULTIPROCESSING=0 runs the model in this "
                "process, where Triton was imported before the interpreter was selected; start Python "
                "with TRITON_INTERPRET=1 (or VAT_BACKEND=interpreter and TRITON_INTERPRET=1) in the "
                "environment, or keep V1 multiprocessing on"
            )
        compilation = vllm_config.compilation_config
        for name in enabled_op_names():
            if f"-{name}" not in compilation.custom_ops and f"+{name}" not in compilation.custom_ops:
                compilation.custom_ops.append(f"+{name}")
        plugin_register.choose_scheduler(vllm_config)

    @classmethod
    def get_mla_prefill_backend_cls(cls, mla_selector_config: Any) -> Any:
        """Our MLA prefill backend (``mla_backend.VatMLAPrefillBackend``) where it serves the model."""
        if plugin_register.part_enabled("attention"):
            from vllm_ascend_triton.plugin.mla_backend import VatMLAPrefillBackend, prefill_supported

            if prefill_supported(mla_selector_config):
                return VatMLAPrefillBackend
        return super().get_mla_prefill_backend_cls(mla_selector_config)

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return "vllm_ascend_triton.plugin.communicator.GlooCpuCommunicator"


def mla_chunking_settings(vllm_config: Any) -> tuple[Any, Any, Any] | None:
    """(chunked prefill, step token budget, prefix caching) as configured, for an MLA model our MLA
    backend serves; None otherwise. vLLM's CPU platform turns chunked prefill and prefix caching
    off for MLA models because its CPU MLA backend cannot serve them (except with AMX); ours
    prefills over cached context chunks, so the interpreter platform keeps what was asked for."""
    from vllm_ascend_triton.plugin.mla_backend import SUPPORTED_DTYPES, kv_cache_dtype_supported

    model = vllm_config.model_config
    if model is None or not getattr(model, "use_mla", False) or not plugin_register.part_enabled("attention"):
        return None
    hf = getattr(model, "hf_text_config", None)
    sparse = getattr(hf, "index_topk", None) is not None
    cache = vllm_config.cache_config
    if sparse or model.dtype not in SUPPORTED_DTYPES or not kv_cache_dtype_supported(cache.cache_dtype):
        return None
    sched = vllm_config.scheduler_config
    return (sched.enable_chunked_prefill, sched.max_num_batched_tokens, cache.enable_prefix_caching)


def restore_mla_chunking(vllm_config: Any, kept: tuple[Any, Any, Any]) -> None:
    """Put back the settings :func:`mla_chunking_settings` read (one log line if they changed)."""
    sched, cache = vllm_config.scheduler_config, vllm_config.cache_config
    now = (sched.enable_chunked_prefill, sched.max_num_batched_tokens, cache.enable_prefix_caching)
    if now != kept:
        logger.info(
            "vllm-ascend-triton: MLA on VAT_TRITON_MLA keeps chunked prefill / step budget / "
            "prefix caching %s (vLLM's CPU platform set %s for its CPU MLA backend)",
            kept,
            now,
        )
    sched.enable_chunked_prefill, sched.max_num_batched_tokens, cache.enable_prefix_caching = kept


def _mla_backend_path(attn_selector_config: Any) -> str | None:
    """``VAT_TRITON_MLA`` for an MLA layer it serves; None (with one log line) otherwise."""
    from vllm_ascend_triton.plugin.mla_backend import BACKEND_PATH, mla_unsupported_reason

    reason = mla_unsupported_reason(attn_selector_config)
    if reason is None:
        return BACKEND_PATH
    if f"mla:{reason}" not in _fallback_logged:
        _fallback_logged.add(f"mla:{reason}")
        logger.warning("vllm-ascend-triton: MLA layer keeps vLLM's CPU MLA backend: %s", reason)
    return None


def enabled_op_names() -> list[str]:
    """vLLM names of the custom ops our plugin replaces, per the switches."""
    names: list[str] = []
    if plugin_register.part_enabled("rope"):
        from vllm_ascend_triton.plugin.ops import ROPE_OPS

        names.extend(ROPE_OPS)
    if plugin_register.part_enabled("moe"):
        from vllm_ascend_triton.plugin.moe import MOE_OP_NAME

        names.append(MOE_OP_NAME)
    return names
