"""Build real vLLM schedulers on a CPU without downloading anything.

A folder holding only a tiny Llama ``config.json`` is enough for vLLM's ``ModelConfig``
(``skip_tokenizer_init=True``); the KV cache config is one full-attention group with a
chosen number of blocks, so the schedulers use vLLM's real ``KVCacheManager``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 65536,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float32",
}


@lru_cache(maxsize=1)
def tiny_model_dir() -> str:
    """A temp folder with a tiny Llama config.json (created once per process)."""
    path = Path(tempfile.mkdtemp(prefix="vat-sim-model-"))
    (path / "config.json").write_text(json.dumps(_TINY_LLAMA))
    return str(path)


@dataclass(frozen=True)
class SchedulerShape:
    """The vLLM scheduler settings of one DP rank."""

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 8192
    max_model_len: int = 16384
    block_size: int = 128
    num_blocks: int = 6000
    enable_prefix_caching: bool = False
    long_prefill_token_threshold: int = 0
    async_scheduling: bool = False


@lru_cache(maxsize=8)
def _model_config(max_model_len: int) -> Any:
    from vllm.config import ModelConfig

    return ModelConfig(
        model=tiny_model_dir(),
        skip_tokenizer_init=True,
        max_model_len=max_model_len,
        dtype="float32",
    )


def make_vllm_config(shape: SchedulerShape, additional_config: dict | None = None) -> Any:
    from vllm.config import CacheConfig, DeviceConfig, SchedulerConfig, VllmConfig

    sched = SchedulerConfig(
        max_num_seqs=shape.max_num_seqs,
        max_num_batched_tokens=shape.max_num_batched_tokens,
        max_model_len=shape.max_model_len,
        is_encoder_decoder=False,
        enable_chunked_prefill=True,
        long_prefill_token_threshold=shape.long_prefill_token_threshold,
        async_scheduling=shape.async_scheduling,
    )
    cache = CacheConfig(block_size=shape.block_size, enable_prefix_caching=shape.enable_prefix_caching)
    cache.num_gpu_blocks = shape.num_blocks
    return VllmConfig(
        model_config=_model_config(shape.max_model_len),
        scheduler_config=sched,
        cache_config=cache,
        device_config=DeviceConfig("cpu"),
        additional_config=dict(additional_config or {}),
    )


def make_kv_cache_config(shape: SchedulerShape) -> Any:
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

    spec = FullAttentionSpec(block_size=shape.block_size, num_kv_heads=2, head_size=64, dtype=torch.float16)
    return KVCacheConfig(
        num_blocks=shape.num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)],
    )


def make_scheduler(cls: type, shape: SchedulerShape, vllm_config: Any = None, **kwargs: Any) -> Any:
    """An instance of ``cls`` (vLLM's Scheduler or a subclass) for one rank."""
    from vllm.v1.structured_output import StructuredOutputManager

    cfg = vllm_config if vllm_config is not None else make_vllm_config(shape)
    return cls(
        vllm_config=cfg,
        kv_cache_config=make_kv_cache_config(shape),
        structured_output_manager=StructuredOutputManager(cfg),
        block_size=shape.block_size,
        **kwargs,
    )


def make_request(
    request_id: str,
    prompt_len: int,
    max_tokens: int,
    arrival_time: float = 0.0,
    token_offset: int = 0,
    block_hasher: Any = None,
) -> Any:
    """A text request with ``prompt_len`` synthetic token ids that ignores EOS, so it
    generates exactly ``max_tokens`` tokens."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    if prompt_len < 1 or max_tokens < 1:
        raise ValueError(f"prompt_len and max_tokens must be >= 1, got {prompt_len}, {max_tokens}")
    # Distinct ids per request (no accidental prefix-cache hits); range() is fast.
    base = 100 + token_offset % 20000
    prompt = list(range(base, base + prompt_len))
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_time,
        block_hasher=block_hasher,
    )


def make_block_hasher(vllm_config: Any) -> Any:
    """The per-request block hasher the engine core installs when prefix caching is on."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

    hash_fn = get_hash_fn_by_name(vllm_config.cache_config.prefix_caching_hash_algo)
    init_none_hash(hash_fn)
    return get_request_block_hasher(vllm_config.cache_config.block_size, hash_fn)


def fake_model_output(scheduler: Any, scheduler_output: Any, token_id: int = 7) -> Any:
    """The ModelRunnerOutput a model would return: one sampled token for every scheduled
    request whose prompt is now fully computed, nothing for partial prefill chunks."""
    from vllm.v1.outputs import ModelRunnerOutput

    req_ids = list(scheduler_output.num_scheduled_tokens)
    sampled: list[list[int]] = []
    requests = scheduler.requests
    for rid in req_ids:
        req = requests[rid]
        sampled.append([token_id] if req.num_computed_tokens >= req.num_tokens else [])
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
        sampled_token_ids=sampled,
    )
