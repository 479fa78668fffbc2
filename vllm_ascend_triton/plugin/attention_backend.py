"""Our paged-attention backend for vLLM 0.32: ``reshape_and_cache`` + ``unified_attention``.

Registered in vLLM's attention-backend registry as ``VAT_TRITON_ATTN`` (``register.py``) and
chosen by our interpreter platform for every layer it supports (``supports_config``); on other
platforms the platform decides (see the README).

KV cache: vLLM 0.32 hands the backend one tensor per layer in logical
``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` order (K then V along the last axis),
with whatever physical layout the engine chose. The backend passes it whole to the
``vat::kv_cache_update`` / ``vat::paged_attention`` custom ops, which take the
``[num_blocks, block_size, num_kv_heads, head_size]`` K and V views our kernels read
(``custom_ops.split_kv_cache``: strided views, no copies).

Covered: decoder self-attention with a mixed batch of prefills, chunked prefills and decodes;
GQA/MQA; sliding window; logits soft-capping; ALiBi; attention sinks; fp16/bf16/fp32 with an
unquantized KV cache; head sizes up to 256. Anything else (MLA, sparse, encoder or
cross-attention, fp8/int KV caches, per-head quantization scales, multimodal prefix ranges,
R-SWA, decode/prefill context parallelism, non-causal masks) is left to the platform's own
backend, decided at backend selection with one log line (``unsupported_reason``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

from vllm_ascend_triton.plugin import counters, custom_ops

logger = logging.getLogger(f"vllm.{__name__}")

BACKEND_NAME = "VAT_TRITON_ATTN"
MAX_HEAD_SIZE = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KV_DTYPE_NAMES = {"auto", "float16", "bfloat16", "float32"}


def unsupported_reason(selector_config: Any) -> str | None:
    """Why our backend cannot serve a layer described by vLLM's ``AttentionSelectorConfig``."""
    c = selector_config
    if c.use_mla:
        return "MLA"
    if c.use_sparse:
        return "sparse attention"
    if c.attn_type != AttentionType.DECODER:
        return f"attention type {c.attn_type}"
    if not 1 <= c.head_size <= MAX_HEAD_SIZE:
        return f"head size {c.head_size} (supported: 1..{MAX_HEAD_SIZE})"
    if c.dtype not in SUPPORTED_DTYPES:
        return f"dtype {c.dtype}"
    if c.kv_cache_dtype is not None and c.kv_cache_dtype not in _KV_DTYPE_NAMES:
        return f"KV cache dtype {c.kv_cache_dtype} (quantized KV caches are not covered)"
    for flag, what in (
        ("use_mm_prefix", "multimodal prefix ranges"),
        ("use_per_head_quant_scales", "per-head quantization scales"),
        ("use_non_causal", "non-causal attention"),
        ("use_pcp", "prefill context parallelism"),
        ("use_dcp", "decode context parallelism"),
        ("use_rswa", "R-SWA"),
    ):
        if getattr(c, flag, False):
            return what
    return None


@dataclass
class VatAttentionMetadata:
    num_actual_tokens: int
    max_query_len: int
    query_start_loc: torch.Tensor
    max_seq_len: int
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    causal: bool


class VatAttentionMetadataBuilder(AttentionMetadataBuilder[VatAttentionMetadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any, device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        counters.label_dp_rank_from_vllm()

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> VatAttentionMetadata:
        m = common_attn_metadata
        if not isinstance(m.causal, bool):
            raise ValueError(f"{BACKEND_NAME} takes a batch-wide causal flag, got a per-request tensor")
        return VatAttentionMetadata(
            num_actual_tokens=m.num_actual_tokens,
            max_query_len=m.max_query_len,
            query_start_loc=m.query_start_loc,
            max_seq_len=m.max_seq_len,
            seq_lens=m.seq_lens,
            block_table=m.block_table_tensor,
            slot_mapping=m.slot_mapping,
            causal=m.causal,
        )


class VatAttentionBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[VatAttentionImpl]:
        return VatAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[VatAttentionMetadataBuilder]:
        return VatAttentionMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[int | MultipleOf]:
        # The KV loop is tiled by cache block; 16-multiples keep tiles DMA-friendly on Ascend.
        return [MultipleOf(16)]

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return 1 <= head_size <= MAX_HEAD_SIZE

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @classmethod
    def supports_compute_capability(cls, capability: Any) -> bool:
        return True


class VatAttentionImpl(AttentionImpl[VatAttentionMetadata]):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
        **extra: Any,
    ) -> None:
        if attn_type != AttentionType.DECODER:
            raise ValueError(f"{BACKEND_NAME} serves decoder self-attention only, got {attn_type}")
        if kv_cache_dtype not in _KV_DTYPE_NAMES:
            raise ValueError(f"{BACKEND_NAME} takes an unquantized KV cache, got {kv_cache_dtype!r}")
        unknown = {k: v for k, v in extra.items() if v not in (None, False, -1)}
        if unknown:
            raise ValueError(f"{BACKEND_NAME} does not support {sorted(unknown)}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.alibi_slopes = (
            torch.tensor(alibi_slopes, dtype=torch.float32) if alibi_slopes is not None else None
        )
        # vLLM's convention: a window of w tokens sees the current token and w - 1 before it.
        self.sliding_window = (-1, -1) if sliding_window is None else (sliding_window - 1, 0)
        self.kv_cache_dtype = kv_cache_dtype
        self.logits_soft_cap = float(logits_soft_cap or 0.0)
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.sinks = sinks
        if sinks is not None and sinks.shape[0] != num_heads:
            raise ValueError(
                f"sinks must have one value per query head ({num_heads}), got {tuple(sinks.shape)}"
            )
        self.attn_type = attn_type
        custom_ops.register_all()

    def do_kv_cache_update(
        self,
        layer: Any,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        torch.ops.vat.kv_cache_update(key, value, kv_cache, slot_mapping)

    def forward(
        self,
        layer: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: VatAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{BACKEND_NAME} has no fused output quantization")
        if attn_metadata is None:  # profiling run
            return output.fill_(0)
        n = attn_metadata.num_actual_tokens
        if self.alibi_slopes is not None and self.alibi_slopes.device != query.device:
            self.alibi_slopes = self.alibi_slopes.to(query.device)
        out = output[:n].view(n, self.num_heads, self.head_size)
        torch.ops.vat.paged_attention(
            query[:n].view(n, self.num_heads, self.head_size),
            kv_cache,
            out,
            attn_metadata.query_start_loc,
            attn_metadata.max_query_len,
            attn_metadata.seq_lens,
            attn_metadata.max_seq_len,
            self.scale,
            attn_metadata.causal,
            self.sliding_window[0],
            self.sliding_window[1],
            attn_metadata.block_table,
            self.logits_soft_cap,
            self.alibi_slopes,
            self.sinks,
        )
        return output
