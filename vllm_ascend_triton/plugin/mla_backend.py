"""Our MLA attention backend for vLLM 0.32 (``VAT_TRITON_MLA``) and its MLA prefill backend.

Built on vLLM's MLA scaffolding (``MLACommonBackend`` / ``MLACommonImpl`` /
``MLACommonMetadataBuilder``, as vLLM's ``triton_mla.py`` is), which splits each batch into
decodes and prefills and does the projections; we supply the three kernels:

- the latent cache write (``do_kv_cache_update``): ``vat::concat_and_cache_mla``;
- decode (``forward_mqa``): MQA over the latent cache with the absorbed query,
  ``vat::mla_decode`` (q ``[B, H, L + R]``, out ``[B, H, L]``, the log-sum-exp too);
- prefill (``VatMLAPrefillBackend``, the MLA prefill backend the platform hands vLLM):
  ``vat::mla_prefill`` over the decompressed heads, causal for the new tokens, non-causal for
  each chunk of cached context, both with the ``[H, T]`` log-sum-exp vLLM's
  ``merge_attn_states`` combines. vLLM gathers the context chunks out of the latent cache and
  decompresses them through ``kv_b_proj`` itself.

The three are torch custom ops (``plugin/custom_ops.py``: one opaque node each for Dynamo and
graph capture, fake implementations) and bump per-process counters named ``concat_and_cache_mla``,
``mla_decode``, ``mla_prefill`` and ``mla_prefill_context_chunk``. The test mutation hook
``VAT_PLUGIN_MUTATE=attention:<factor>`` scales our MLA outputs too (decode and prefill).

Chosen by our interpreter platform for MLA layers it supports (``mla_unsupported_reason``):
dense (not sparse) MLA, fp16/bf16/fp32 with an unquantized latent cache, latent <= 512 and rope
<= 128 (``kernels.limits``), cache blocks of a multiple of 16. Anything else keeps vLLM's CPU
MLA backend (one log line).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from vllm.model_executor.layers.attention.mla_attention import (
    MLACommonBackend,
    MLACommonImpl,
    MLACommonMetadata,
)
from vllm.v1.attention.backend import AttentionLayer, AttentionType, MultipleOf
from vllm.v1.attention.backends.mla.prefill.base import MLAPrefillBackend

from vllm_ascend_triton.kernels.limits import MLA_MAX_KV_LORA_RANK, MLA_MAX_ROPE_DIM
from vllm_ascend_triton.plugin import counters, mutate

logger = logging.getLogger(f"vllm.{__name__}")

BACKEND_NAME = "VAT_TRITON_MLA"
BACKEND_PATH = "vllm_ascend_triton.plugin.mla_backend.VatMLABackend"
PREFILL_BACKEND_NAME = "VAT_TRITON_MLA_PREFILL"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KV_DTYPE_NAMES = {"auto", "float16", "bfloat16", "float32"}


def mla_unsupported_reason(selector_config: Any) -> str | None:
    """Why ``VAT_TRITON_MLA`` cannot serve an MLA layer described by vLLM's
    ``AttentionSelectorConfig`` (None: it can)."""
    c = selector_config
    if not c.use_mla:
        return "not an MLA layer"
    if c.use_sparse:
        return "sparse MLA"
    if c.attn_type != AttentionType.DECODER:
        return f"attention type {c.attn_type}"
    if c.dtype not in SUPPORTED_DTYPES:
        return f"dtype {c.dtype}"
    if c.kv_cache_dtype is not None and c.kv_cache_dtype not in _KV_DTYPE_NAMES:
        return f"KV cache dtype {c.kv_cache_dtype} (quantized latent caches are not covered)"
    if not 2 <= c.head_size <= MLA_MAX_KV_LORA_RANK + MLA_MAX_ROPE_DIM:
        limit = f"{MLA_MAX_KV_LORA_RANK} + {MLA_MAX_ROPE_DIM}"
        return f"latent cache row of {c.head_size} (supported: up to {limit})"
    for flag, what in (("use_pcp", "prefill context parallelism"), ("use_dcp", "decode context parallelism")):
        if getattr(c, flag, False):
            return what
    return None


def kv_cache_dtype_supported(kv_cache_dtype: str | None) -> bool:
    """Whether our kernels take a latent cache of vLLM's ``cache_dtype`` (unquantized only)."""
    return kv_cache_dtype is None or kv_cache_dtype in _KV_DTYPE_NAMES


def prefill_supported(mla_selector_config: Any) -> bool:
    """Whether our prefill backend serves a model (vLLM's ``MLAPrefillSelectorConfig``)."""
    return mla_selector_config.dtype in SUPPORTED_DTYPES


# --- the custom ops ------------------------------------------------------------------------------


def _concat_and_cache_mla(
    kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    from vllm_ascend_triton.kernels.mla import concat_and_cache_mla

    concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping)
    counters.bump("concat_and_cache_mla")


def _mla_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    softmax_scale: float,
    kv_lora_rank: int,
    query_len: int,
) -> None:
    from vllm_ascend_triton.kernels.mla import mla_decode

    mla_decode(q, kv_cache, out, block_table, seq_lens, max_seq_len, softmax_scale, kv_lora_rank,
               query_len=query_len, lse=lse)  # fmt: skip
    counters.bump("mla_decode")
    if mutate.ACTIVE:
        mutate.apply("attention", out)


def _mla_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
) -> None:
    from vllm_ascend_triton.kernels.mla import mla_prefill

    mla_prefill(q, k, v, out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                lse=lse)  # fmt: skip
    counters.bump("mla_prefill" if causal else "mla_prefill_context_chunk")
    if mutate.ACTIVE:
        mutate.apply("attention", out)


def register_custom_ops() -> None:
    """Register the MLA ops (``custom_ops.register_all`` calls this, once per process)."""
    from vllm_ascend_triton.plugin.custom_ops import register_op

    register_op("concat_and_cache_mla", _concat_and_cache_mla, mutates_args=["kv_cache"])
    register_op("mla_decode", _mla_decode, mutates_args=["out", "lse"])
    register_op("mla_prefill", _mla_prefill, mutates_args=["out", "lse"])


def _ops() -> Any:
    ops = torch.ops.vat
    if not hasattr(ops, "mla_decode"):  # a process where the plugin did not register (a test)
        from vllm_ascend_triton.plugin.custom_ops import register_all

        register_all()
        register_custom_ops()
    return ops


# --- the backend -----------------------------------------------------------------------------------


class VatMLAPrefillBackend(MLAPrefillBackend):
    """vLLM MLA prefill backend on ``vat::mla_prefill``."""

    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)

    @staticmethod
    def get_name() -> str:
        return PREFILL_BACKEND_NAME

    def _run(self, q, k, v, cu_q, cu_k, max_q, max_k, causal, want_lse, out):
        n, heads = q.shape[0], q.shape[1]
        if out is None:
            out = torch.empty(n, heads, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(heads, n, dtype=torch.float32, device=q.device) if want_lse else None
        _ops().mla_prefill(q, k, v, out, lse, cu_q, cu_k, int(max_q), int(max_k), self.scale, causal)
        return out, lse

    def run_prefill_new_tokens(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        return_softmax_lse: bool,
        out: torch.Tensor | None = None,
        output_scale: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if output_scale is not None:
            raise NotImplementedError(f"{PREFILL_BACKEND_NAME} has no fused output quantization")
        m = self._prefill_metadata
        cu = m.query_start_loc
        out, lse = self._run(q, k, v, cu, cu, m.max_query_len, m.max_query_len, True, return_softmax_lse, out)
        return (out, lse) if return_softmax_lse else out

    def run_prefill_context_chunk(
        self,
        chunk: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(
            q, k, v, chunk.query_start_loc, chunk.cu_seq_lens, chunk.max_query_len, chunk.max_seq_len,
            False, True, out,
        )  # fmt: skip


class VatMLABackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[VatMLAImpl]:
        return VatMLAImpl

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[int | MultipleOf]:
        # The decode KV loop is tiled by cache block; 16-multiples keep tiles whole on the cube.
        return [MultipleOf(16)]

    @classmethod
    def supports_block_size(cls, block_size: int | None) -> bool:
        return block_size is None or block_size % 16 == 0

    @classmethod
    def supports_compute_capability(cls, capability: Any) -> bool:
        return True


class VatMLAImpl(MLACommonImpl[MLACommonMetadata]):
    can_return_lse_for_decode: bool = True

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None,
        attn_type: str,
        kv_sharing_target_layer_name: str | None,
        **mla_args: Any,
    ) -> None:
        if any((alibi_slopes, sliding_window, logits_soft_cap)):
            raise NotImplementedError(f"{BACKEND_NAME} has no ALiBi, sliding window or logits soft cap")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"{BACKEND_NAME} serves decoder self-attention only, got {attn_type}")
        if kv_cache_dtype not in _KV_DTYPE_NAMES:
            raise NotImplementedError(
                f"{BACKEND_NAME} takes an unquantized latent cache, got {kv_cache_dtype!r}"
            )
        super().__init__(
            num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window, kv_cache_dtype,
            logits_soft_cap, attn_type, kv_sharing_target_layer_name, **mla_args,
        )  # fmt: skip
        self.supports_quant_query_input = False
        counters.label_dp_rank_from_vllm()

    def forward_mqa(
        self,
        q: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        kv_c_and_k_pe_cache: torch.Tensor,
        attn_metadata: MLACommonMetadata,
        layer: AttentionLayer,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert attn_metadata.decode is not None
        if isinstance(q, tuple):
            q = torch.cat(q, dim=-1)
        rows, heads, _ = q.shape
        decode = attn_metadata.decode
        num_seqs = decode.seq_lens.shape[0]
        query_len = rows // num_seqs if num_seqs else 1
        out = torch.empty(rows, heads, self.kv_lora_rank, dtype=q.dtype, device=q.device)
        lse = torch.empty(rows, heads, dtype=torch.float32, device=q.device)
        _ops().mla_decode(
            q, kv_c_and_k_pe_cache, out, lse, decode.block_table, decode.seq_lens,
            int(attn_metadata.max_seq_len), self.scale, self.kv_lora_rank, query_len,
        )  # fmt: skip
        return out, lse

    def do_kv_cache_update(
        self,
        kv_c_normed: torch.Tensor,
        k_pe: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_cache_dtype: str,
        k_scale: torch.Tensor,
    ) -> None:
        if kv_cache.numel() == 0:  # profiling run before the caches exist
            return
        _ops().concat_and_cache_mla(kv_c_normed, k_pe, kv_cache, slot_mapping.flatten())
