"""Stand-in for vllm_ascend/attention/attention_v1.py (182b75e): ``AscendAttentionBackend``
(name ``CUSTOM``) with ``get_kv_cache_shape = (2, num_blocks, block_size, num_kv_heads,
head_size)``, taking the (K, V) pair its model runner hands; paged attention in plain torch
(fp32 math), decoder self-attention only."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    MultipleOf,
)

from vllm_ascend import standin_counts


@dataclass
class AscendMetadata:
    num_actual_tokens: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor


class AscendAttentionMetadataBuilder(AttentionMetadataBuilder[AscendMetadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        m = common_attn_metadata
        return AscendMetadata(
            num_actual_tokens=m.num_actual_tokens,
            query_start_loc=m.query_start_loc_cpu,
            seq_lens=m.seq_lens.cpu(),
            block_table=m.block_table_tensor,
            slot_mapping=m.slot_mapping,
        )


class AscendAttentionBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls():
        return AscendAttentionBackendImpl

    @staticmethod
    def get_builder_cls():
        return AscendAttentionMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str=""):
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None):
        return [MultipleOf(16)]

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        return True


class AscendAttentionBackendImpl(AttentionImpl[AscendMetadata]):
    def __init__(
        self,
        num_heads,
        head_size,
        scale,
        num_kv_heads,
        alibi_slopes,
        sliding_window,
        kv_cache_dtype,
        logits_soft_cap=None,
        attn_type=AttentionType.DECODER,
        kv_sharing_target_layer_name=None,
        sinks=None,
        **extra,
    ):
        if alibi_slopes is not None or sliding_window is not None or logits_soft_cap or sinks is not None:
            raise NotImplementedError("the stand-in backend covers plain causal attention only")
        self.num_heads, self.head_size, self.scale, self.num_kv_heads = (
            num_heads,
            head_size,
            scale,
            num_kv_heads,
        )
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.attn_type = attn_type

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache, value_cache = kv_cache
        n = slot_mapping.shape[0]
        keep = slot_mapping >= 0
        slots = slot_mapping[keep].long()
        key_cache.view(-1, self.num_kv_heads, self.head_size).index_copy_(0, slots, key[:n][keep])
        value_cache.view(-1, self.num_kv_heads, self.head_size).index_copy_(0, slots, value[:n][keep])

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):  # fmt: skip
        if attn_metadata is None:
            return output.fill_(0)
        standin_counts.bump("attention")
        key_cache, value_cache = kv_cache
        m = attn_metadata
        n = m.num_actual_tokens
        q = query[:n].view(n, self.num_heads, self.head_size).float()
        out = output[:n].view(n, self.num_heads, self.head_size)
        block = key_cache.shape[1]
        group = self.num_heads // self.num_kv_heads
        starts = m.query_start_loc.tolist()
        for i, seq_len in enumerate(m.seq_lens.tolist()):
            qs, qe = starts[i], starts[i + 1]
            if qe == qs:
                continue
            blocks = m.block_table[i, : (seq_len + block - 1) // block].long()
            k = key_cache[blocks].reshape(-1, self.num_kv_heads, self.head_size)[:seq_len].float()
            v = value_cache[blocks].reshape(-1, self.num_kv_heads, self.head_size)[:seq_len].float()
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            scores = torch.einsum("qhd,khd->hqk", q[qs:qe], k) * self.scale
            q_pos = torch.arange(seq_len - (qe - qs), seq_len)
            future = torch.arange(seq_len)[None, :] > q_pos[:, None]
            scores.masked_fill_(future[None], float("-inf"))
            out[qs:qe] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(out.dtype)
        return output
