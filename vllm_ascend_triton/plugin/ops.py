"""Out-of-tree replacements of vLLM's rotary-embedding custom ops, running our rope kernels.

vLLM's ``CustomOp.register_oot`` swaps a class by its *exact* name: instantiating
``LinearScalingRotaryEmbedding`` looks up that name, not its base class's, so each class of the
cos/sin-cache family is registered on its own. Each replacement is a subclass of vLLM's class
(same ``__init__``, same cos/sin cache, same ``forward_native``) whose device forwards
(``forward_cpu`` for the interpreter platform, ``forward_oot`` for an Ascend platform) call
:func:`vllm_ascend_triton.kernels.rotary_embedding` / ``mrope_rotary_embedding`` in place.

Covered (all rotate with a precomputed cos/sin cache, which is what our kernel reads):
``RotaryEmbedding``, ``LinearScalingRotaryEmbedding``, ``NTKScalingRotaryEmbedding``,
``DynamicNTKScalingRotaryEmbedding``, ``DynamicNTKAlphaRotaryEmbedding``,
``YaRNScalingRotaryEmbedding``, ``Llama3RotaryEmbedding``, ``DeepseekScalingRotaryEmbedding``
(with per-token ``offsets``) and ``MRotaryEmbedding`` (T/H/W sections, interleaved or not).
Not covered (their forward is not a plain cache rotation): Phi-3 long rope, dual-chunk, Gemma-4,
Fourier, Llama-4 vision, DeepSeek-V4, ``MRotaryEmbeddingInterleaved`` and Bailing MRoPE.

Each call goes through the ``vat::rotary_embedding`` / ``vat::mrope_rotary_embedding`` custom
ops (``custom_ops.py``), so vLLM's compile mode traces one opaque node per call.

A call our kernel cannot take (dtype, layout, an ``offsets`` argument MRoPE does not support)
falls back to vLLM's ``forward_native`` for that layer, with one log line per layer: these are
static properties, decided the same way in eager and compiled runs. In eager runs a
ValueError/TypeError from our input validation does the same, never a crash at a request; under
compile the op raises it (a traced graph cannot switch implementations at run time).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vllm_ascend_triton.plugin import custom_ops

logger = logging.getLogger(f"vllm.{__name__}")

# vLLM class name -> whether it is an MRoPE class. Names are the registration keys.
ROPE_OPS: dict[str, bool] = {
    "RotaryEmbedding": False,
    "LinearScalingRotaryEmbedding": False,
    "NTKScalingRotaryEmbedding": False,
    "DynamicNTKScalingRotaryEmbedding": False,
    "DynamicNTKAlphaRotaryEmbedding": False,
    "YaRNScalingRotaryEmbedding": False,
    "Llama3RotaryEmbedding": False,
    "DeepseekScalingRotaryEmbedding": False,
    "MRotaryEmbedding": True,
}

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _unsupported(query: torch.Tensor, key: torch.Tensor | None) -> str | None:
    """Why our kernel cannot take this call, or None."""
    for name, t in (("query", query), ("key", key)):
        if t is None:
            continue
        if t.dtype not in _KERNEL_DTYPES:
            return f"{name} dtype {t.dtype} (kernel takes fp16/bf16/fp32)"
        if t.stride(-1) != 1:
            return f"{name} last dim not contiguous"
    return None


class _VatRopeMixin:
    """Device forwards through our kernels; vLLM's ``forward_native`` stays the fallback."""

    _vat_fallback_reason: str | None = None

    def _vat_fallback(self, reason: str, *args: Any) -> Any:
        if self._vat_fallback_reason is None:
            self._vat_fallback_reason = reason
            logger.warning(
                "vllm-ascend-triton: %s keeps vLLM's native rope for this layer: %s",
                type(self).__name__,
                reason,
            )
        return self.forward_native(*args)  # type: ignore[attr-defined]

    def _vat_cache(self, query: torch.Tensor) -> torch.Tensor:
        match = getattr(self, "_match_cos_sin_cache_dtype", None)
        return match(query) if match is not None else self.cos_sin_cache  # type: ignore[attr-defined]

    def _vat_run(
        self,
        op: Any,
        native_args: tuple,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None,
        *rest: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate in place through the custom op `op`; in eager runs a call it refuses keeps
        vLLM's native rope."""
        if torch.compiler.is_compiling():
            op(positions, query, key, *rest)
            return query, key
        try:
            op(positions, query, key, *rest)
        except (ValueError, TypeError) as exc:
            return self._vat_fallback(f"{type(exc).__name__}: {exc}", *native_args)
        return query, key

    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        native_args = (positions, query, key) if offsets is None else (positions, query, key, offsets)
        if self._vat_fallback_reason is not None:
            return self.forward_native(*native_args)  # type: ignore[attr-defined]
        reason = _unsupported(query, key)
        if reason is not None:
            return self._vat_fallback(reason, *native_args)
        return self._vat_run(
            torch.ops.vat.rotary_embedding,
            native_args,
            positions,
            query,
            key,
            self.head_size,  # type: ignore[attr-defined]
            self._vat_cache(query),
            self.is_neox_style,  # type: ignore[attr-defined]
            offsets,
        )

    forward_cpu = forward_oot


class _VatMRopeMixin(_VatRopeMixin):
    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if positions.dim() == 1 or self._vat_fallback_reason is not None:
            return super().forward_oot(positions, query, key, offsets)
        native_args = (positions, query, key) if offsets is None else (positions, query, key, offsets)
        if offsets is not None:
            return self._vat_fallback("MRoPE with offsets", *native_args)
        if not self.mrope_section:  # type: ignore[attr-defined]
            return self._vat_fallback("[3, T] positions without mrope_section", *native_args)
        reason = _unsupported(query, key)
        if reason is not None:
            return self._vat_fallback(reason, *native_args)
        return self._vat_run(
            torch.ops.vat.mrope_rotary_embedding,
            native_args,
            positions,
            query,
            key,
            self.head_size,  # type: ignore[attr-defined]
            self._vat_cache(query),
            self.is_neox_style,  # type: ignore[attr-defined]
            list(self.mrope_section),  # type: ignore[attr-defined]
            bool(self.mrope_interleaved),  # type: ignore[attr-defined]
        )

    forward_cpu = forward_oot


def replacement_class(vllm_name: str) -> type:
    """Our subclass of vLLM's rotary class ``vllm_name`` (created once per process)."""
    if vllm_name not in ROPE_OPS:
        raise ValueError(f"no rope replacement for {vllm_name!r}; known: {', '.join(ROPE_OPS)}")
    cached = _REPLACEMENTS.get(vllm_name)
    if cached is not None:
        return cached
    custom_ops.register_all()
    from vllm.model_executor.layers import rotary_embedding as vllm_rope

    base = getattr(vllm_rope, vllm_name)
    mixin = _VatMRopeMixin if ROPE_OPS[vllm_name] else _VatRopeMixin
    cls = type(f"Vat{vllm_name}", (mixin, base), {"__module__": __name__})
    _REPLACEMENTS[vllm_name] = cls
    return cls


_REPLACEMENTS: dict[str, type] = {}
