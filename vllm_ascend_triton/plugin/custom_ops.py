"""Our kernels as torch custom ops in the library namespace ``vat``: one opaque node each for
Dynamo (``torch.compile``, vLLM's compile mode) and for graph capture.

Why: vLLM compiles the model's forward with Dynamo (``fullgraph=True``). A plain Python host
wrapper would be traced into (its validation, config lookup and context variables then either
break the trace or get baked into the graph); a custom op is called as one node, and its
``fake`` implementation tells the tracer the outputs' shapes and dtypes without running it.
Everything inside the op (input checks included) runs eagerly at every call.

How to add an op (other families: MLA, W8A8 MoE, ...)::

    from vllm_ascend_triton.plugin.custom_ops import register_op

    def _my_op(x: torch.Tensor, out: torch.Tensor, scale: float) -> None:
        my_kernel(x, out, scale)            # the host API; in place on `out`

    def register_custom_ops() -> None:      # in your plugin module
        register_op("my_op", _my_op, mutates_args=["out"])   # fake: a no-op (returns nothing)

then add your module's path to :data:`FAMILY_MODULES` (one line) so :func:`register_all` calls
its ``register_custom_ops()``, and call the op as ``torch.ops.vat.my_op(...)``. An op that
returns tensors needs a ``fake`` that builds empty outputs of the right shape and dtype
(``torch.empty(..., device=x.device)``); type hints on ``impl`` give the schema
(``torch.library.infer_schema``: Tensor, Tensor | None, int, float, bool, str, list[int]).
Registration is idempotent per process (a second call with the same name returns the op).

When: :func:`register_all` runs when the plugin registers (``plugin/register.py``) and when a
test or benchmark calls it; importing ``vllm_ascend_triton`` registers nothing.

The ops registered here (all in place unless they return):

- ``vat::rotary_embedding(positions, query!, key!?, head_size, cos_sin_cache, is_neox, offsets?)``
- ``vat::mrope_rotary_embedding(positions, query!, key!?, head_size, cos_sin_cache, is_neox,
  mrope_section, mrope_interleaved)``
- ``vat::fused_topk(...) -> (weights, ids)``, ``vat::grouped_topk(...) -> (weights, ids)``
- ``vat::fused_experts(...) -> out``
- ``vat::reshape_and_cache(key, value, key_cache!, value_cache!, slot_mapping)``
- ``vat::kv_cache_update(key, value, kv_cache!, slot_mapping)``: vLLM 0.32's packed
  ``[blocks, kv_heads, block, 2 * head]`` cache, split into K/V views inside the op
- ``vat::unified_attention(q, k_cache, v_cache, out!, ...)`` and
  ``vat::paged_attention(q, kv_cache, out!, ...)`` (the packed cache, as the backend holds it)

Each impl bumps the per-process call counter of its kernel (``counters.py``) and applies the test
mutation hook (``mutate.py``) when that is on; both are a few attribute reads when off.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vllm_ascend_triton.plugin import counters, mutate

NAMESPACE = "vat"
# Plugin modules of other families, each with a ``register_custom_ops()`` function.
FAMILY_MODULES: tuple[str, ...] = ("vllm_ascend_triton.plugin.mla_backend",)

# Every backend's tensors (CPU for the interpreter, PrivateUse1 for torch_npu, CUDA) reach the
# same Python impl; the fake impl serves meta/fake tensors while tracing.
DEFAULT_DISPATCH_KEY = "CompositeExplicitAutograd"

_lock = threading.Lock()
_lib: torch.library.Library | None = None
_ops: dict[str, Any] = {}
_all_done = False


def _library() -> torch.library.Library:
    global _lib
    if _lib is None:
        _lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    return _lib


def _noop_fake(*args: Any, **kwargs: Any) -> None:
    return None


def register_op(
    name: str,
    impl: Callable[..., Any],
    *,
    mutates_args: Sequence[str] = (),
    fake: Callable[..., Any] | None = None,
    dispatch_key: str = DEFAULT_DISPATCH_KEY,
    tags: tuple[torch.Tag, ...] = (),
) -> Any:
    """Register ``impl`` as the torch custom op ``vat::<name>`` (once per process).

    Args:
        name: the op name inside the ``vat`` namespace.
        impl: the eager implementation; its type hints give the op's schema.
        mutates_args: names of the tensor arguments ``impl`` writes in place.
        fake: the shape/dtype-only implementation used while tracing; may be omitted only when
            ``impl`` returns nothing (the fake is then a no-op).
        dispatch_key: the dispatcher key ``impl`` serves (default: every backend).
        tags: torch tags of the op (e.g. ``torch.Tag.needs_fixed_stride_order``).

    Returns:
        The op, ``torch.ops.vat.<name>`` (an ``OpOverloadPacket``).

    Raises:
        ValueError: ``fake`` is missing for an op that returns tensors, or ``name`` is already
            registered with another ``impl``.
    """
    with _lock:
        if name in _ops:
            if _ops[name][1] is not impl:
                raise ValueError(f"vat::{name} is already registered with another implementation")
            return _ops[name][0]
        schema = torch.library.infer_schema(impl, mutates_args=tuple(mutates_args))
        if fake is None:
            if not schema.endswith("-> ()"):
                raise ValueError(f"vat::{name} returns tensors ({schema}): pass fake=")
            fake = _noop_fake
        lib = _library()
        lib.define(name + schema, tags=tags)
        lib.impl(name, impl, dispatch_key)
        lib._register_fake(name, fake)
        op = getattr(getattr(torch.ops, NAMESPACE), name)
        _ops[name] = (op, impl)
        return op


def registered_ops() -> list[str]:
    """Names of the ``vat`` ops registered in this process."""
    with _lock:
        return sorted(_ops)


# --- our kernels' ops ------------------------------------------------------------------------


def _rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    offsets: torch.Tensor | None = None,
) -> None:
    from vllm_ascend_triton.kernels import rotary_embedding

    rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox, offsets)
    counters.bump("rotary_embedding")
    if mutate.ACTIVE:
        mutate.apply("rope", query, key)


def _mrope_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    mrope_section: list[int],
    mrope_interleaved: bool,
) -> None:
    from vllm_ascend_triton.kernels import mrope_rotary_embedding

    mrope_rotary_embedding(
        positions, query, key, head_size, cos_sin_cache, is_neox, list(mrope_section), mrope_interleaved
    )
    counters.bump("mrope_rotary_embedding")
    if mutate.ACTIVE:
        mutate.apply("rope", query, key)


def _topk_fake(gating_output: torch.Tensor, topk: int, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    m = gating_output.shape[0]
    dev = gating_output.device
    return (
        torch.empty((m, topk), dtype=torch.float32, device=dev),
        torch.empty((m, topk), dtype=torch.int32, device=dev),
    )


def _fused_topk(
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    scoring_func: str = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    from vllm_ascend_triton.kernels import fused_topk

    out = fused_topk(
        gating_output,
        topk,
        renormalize,
        scoring_func=scoring_func,
        e_score_correction_bias=e_score_correction_bias,
        routed_scaling_factor=routed_scaling_factor,
    )
    counters.bump("fused_topk")
    return out


def _grouped_topk(
    gating_output: torch.Tensor,
    topk: int,
    renormalize: bool,
    num_expert_group: int,
    topk_group: int,
    scoring_func: str = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    from vllm_ascend_triton.kernels import grouped_topk

    out = grouped_topk(
        gating_output,
        topk,
        renormalize,
        num_expert_group,
        topk_group,
        scoring_func=scoring_func,
        e_score_correction_bias=e_score_correction_bias,
        routed_scaling_factor=routed_scaling_factor,
    )
    counters.bump("grouped_topk")
    return out


def _fused_experts(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    expert_map: torch.Tensor | None = None,
    global_num_experts: int = -1,
) -> torch.Tensor:
    from vllm_ascend_triton.kernels import fused_experts

    out = fused_experts(
        hidden_states,
        w13,
        w2,
        topk_weights,
        topk_ids,
        activation=activation,
        expert_map=expert_map,
        global_num_experts=global_num_experts if global_num_experts > 0 else None,  # -1: the default
    )
    counters.bump("fused_experts")
    if mutate.ACTIVE:
        mutate.apply("moe", out)
    return out


def _fused_experts_fake(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.empty_like(hidden_states)


def _reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    from vllm_ascend_triton.kernels import reshape_and_cache

    reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    counters.bump("reshape_and_cache")


def split_kv_cache(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM 0.32's packed cache, logical ``[blocks, kv_heads, block, 2 * head]`` (K then V on the
    last axis), as the ``[blocks, block, kv_heads, head]`` K and V views our kernels take.

    Args:
        kv_cache: one layer's cache tensor as vLLM hands it to the attention backend.
        head_size: the head size (half the last axis).

    Returns:
        ``(key_cache, value_cache)``, strided views of ``kv_cache`` (no copies).

    Raises:
        ValueError: the last axis is not ``2 * head_size``.
    """
    if kv_cache.shape[-1] != 2 * head_size:
        raise ValueError(f"kv_cache last dim must be 2 * head_size = {2 * head_size}, got {kv_cache.shape}")
    k, v = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return k, v


def _kv_cache_update(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    from vllm_ascend_triton.kernels import reshape_and_cache

    key_cache, value_cache = split_kv_cache(kv_cache, key.shape[-1])
    n = slot_mapping.shape[0]
    reshape_and_cache(key[:n], value[:n], key_cache, value_cache, slot_mapping)
    counters.bump("reshape_and_cache")


def _unified_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    seqused_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
    block_table: torch.Tensor,
    softcap: float,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> None:
    from vllm_ascend_triton.kernels import unified_attention

    unified_attention(
        q,
        k_cache,
        v_cache,
        out,
        cu_seqlens_q,
        max_seqlen_q,
        seqused_k,
        max_seqlen_k,
        softmax_scale,
        causal,
        (window_left, window_right),
        block_table,
        softcap,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
    )
    counters.bump("unified_attention")
    if mutate.ACTIVE:
        mutate.apply("attention", out)


def _paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    seqused_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
    block_table: torch.Tensor,
    softcap: float,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> None:
    k_cache, v_cache = split_kv_cache(kv_cache, q.shape[-1])
    _unified_attention(
        q,
        k_cache,
        v_cache,
        out,
        cu_seqlens_q,
        max_seqlen_q,
        seqused_k,
        max_seqlen_k,
        softmax_scale,
        causal,
        window_left,
        window_right,
        block_table,
        softcap,
        alibi_slopes,
        sinks,
    )


def _register_core_ops() -> None:
    register_op("rotary_embedding", _rotary_embedding, mutates_args=["query", "key"])
    register_op("mrope_rotary_embedding", _mrope_rotary_embedding, mutates_args=["query", "key"])
    register_op("fused_topk", _fused_topk, fake=_topk_fake)
    register_op("grouped_topk", _grouped_topk, fake=_topk_fake)
    register_op("fused_experts", _fused_experts, fake=_fused_experts_fake)
    register_op("reshape_and_cache", _reshape_and_cache, mutates_args=["key_cache", "value_cache"])
    register_op("kv_cache_update", _kv_cache_update, mutates_args=["kv_cache"])
    register_op("unified_attention", _unified_attention, mutates_args=["out"])
    register_op("paged_attention", _paged_attention, mutates_args=["out"])


def register_all() -> list[str]:
    """Register our kernels' ops and those of every module in :data:`FAMILY_MODULES` (idempotent).

    Returns:
        The names of all ``vat`` ops now registered.
    """
    global _all_done
    if not _all_done:
        _register_core_ops()
        for path in FAMILY_MODULES:
            importlib.import_module(path).register_custom_ops()
        _all_done = True
    return registered_ops()
