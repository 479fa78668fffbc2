"""Our kernels inside vLLM beside vllm-ascend: opt-in with ``VAT_ASCEND=1``, nothing changes when off.

vllm-ascend (``vllm_ascend``, read at commit 182b75e) is vLLM's platform plugin on Ascend hosts.
vLLM activates one platform plugin only, so ours cannot run beside it; instead, with
``VAT_ASCEND=1``, our general plugin (``register.py``) turns the platform object vLLM resolved,
vllm-ascend's ``NPUPlatform`` (found by class in the MRO, not by device type), into an instance of
a subclass of its own class (:func:`platform_class`). Everything the subclass does not override
stays vllm-ascend's. In every vLLM process that runs our general plugin:

- attention (``VAT_PLUGIN_ATTENTION``): ``get_attn_backend_cls`` answers our
  :class:`VatAscendAttentionBackend` for each layer it supports and vllm-ascend's fixed table for
  the rest (MLA, sparse, quantized KV caches, head sizes above 256, encoder layers: one log line
  per reason). Our backend follows vllm-ascend's model runner contract: ``get_kv_cache_shape``
  is ``(2, num_blocks, block_size, num_kv_heads, head_size)`` and the layer is handed a
  ``(key_cache, value_cache)`` pair of ``[num_blocks, block_size, num_kv_heads, head_size]``;
  the metadata builder reads vLLM's ``CommonAttentionMetadata`` fields, which vllm-ascend's
  runner fills (its ``AscendCommonAttentionMetadata`` subclasses it).
- rope and MoE (``VAT_PLUGIN_ROPE``, ``VAT_PLUGIN_MOE``): vllm-ascend registers its own ops in
  ``NPUWorker.__init__`` (``register_ascend_customop``), after general plugins ran, and vLLM's
  ``register_oot`` asserts on a duplicate name, so registering first would crash its worker.
  ``check_and_update_config`` therefore names as the worker class our subclass of the worker class
  vllm-ascend chose (its ``NPUWorker``; :func:`worker_class`); after vllm-ascend's registration
  in that class's ``__init__``, ours replaces, in vLLM's
  out-of-tree registry, each rope class we cover by a subclass of the class registered there
  (vllm-ascend's own for the four it registers: its ``__init__`` runs, the forwards are ours), and
  ``RoutedExperts`` by a subclass of vllm-ascend's ``AscendRoutedExperts``. That subclass routes
  through our ``fused_topk`` / ``grouped_topk`` (its ``_select_experts``) and swaps vllm-ascend's
  *unquantized* method (``AscendUnquantizedFusedMoEMethod``, exactly that class) for ours, whose
  ``apply`` runs our ``fused_experts``. Quantized methods are never touched. Covered paths: no
  expert parallelism, where vllm-ascend always uses its all-gather MoE communication and every
  rank computes all its experts on all gathered tokens (``select_moe_comm_method``); with expert
  parallelism vllm-ascend picks MC2 / all-to-all dispatch per batch inside its experts call, so
  experts stay vllm-ascend's there. Routing stays vllm-ascend's under EPLB (its ``log2phy`` map),
  with shared experts mixed into the routed ones (``mix_placement``), during its profile run
  (forced load balance), and for the layer kinds ``moe.layer_unsupported`` names. Shared experts
  run as vllm-ascend runs them.
- scheduler (``VAT_PLUGIN_SCHEDULER``): ``BalanceScheduler`` when the balance switch is on and no
  scheduler class is set after vllm-ascend's own choices (``register.choose_scheduler``); the
  scheduler then makes ours the one balance mechanism (``scheduler/compat.py``).

Users: ``docs/vllm.md``. Tests: ``tests/ascend_standin`` (a stand-in ``vllm_ascend`` over vLLM's CPU
platform that mirrors the registration mechanics named above).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from vllm_ascend_triton.runtime.env import flag

logger = logging.getLogger("vllm.vllm_ascend_triton.plugin.ascend")

ASCEND_ENV = "VAT_ASCEND"
NPU_PLATFORM = ("vllm_ascend.platform", "NPUPlatform")
ASCEND_PLATFORM_ENTRY_POINT = "vllm_ascend:register"
ASCEND_WORKER_CLS = "vllm_ascend.worker.worker.NPUWorker"
# Our worker class for vllm-ascend's worker class X is this module's attribute
# WORKER_PREFIX + X with "." spelled _DOT_: the name alone tells every process what to subclass.
WORKER_PREFIX = "VatWorker_over_"
ATTENTION_BACKEND_CLS = f"{__name__}.VatAscendAttentionBackend"
ASCEND_UNQUANTIZED_MOE = ("vllm_ascend.ops.fused_moe.routed_experts", "AscendUnquantizedFusedMoEMethod")
ASCEND_EXPERTS_RESULT = ("vllm_ascend.ops.fused_moe.moe_comm_method", "FusedExpertsResult")
ROUTED_EXPERTS = "RoutedExperts"
# What register_ascend_customop (vllm_ascend/utils.py, 182b75e) registers with register_oot, so
# these names are vllm-ascend's unless we replace them after it ran (see the module docstring).
ASCEND_REGISTERED = frozenset(
    {
        "QuickGELU", "SiluAndMul", "SiluAndMulClamp", "RotaryEmbedding", "MRotaryEmbedding",
        "ColumnParallelLinear", "RowParallelLinear", "YaRNScalingRotaryEmbedding",
        "MergedColumnParallelLinear", "QKVParallelLinear", "ReplicatedLinear",
        "DeepseekScalingRotaryEmbedding", "VocabParallelEmbedding", "ParallelLMHead", "LogitsProcessor",
        "RMSNorm", "GemmaRMSNorm", "MultiHeadLatentAttentionWrapper", "MMEncoderAttention",
        "ApplyRotaryEmb", "RMSNormGated", "Conv3dLayer", "RelPosAttention", "CustomQwen2Decoder",
        "GatedDeltaNetAttention", "BailingMoELinearAttention", "MoERunner", "RoutedExperts",
        "GateLinear",
    }
)  # fmt: skip

_logged: set[str] = set()


def _log_once(key: str, level: int, msg: str, *args: Any) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, msg, *args)


def opted_in(environ: Mapping[str, str] | None = None) -> bool:
    """The ``VAT_ASCEND`` switch (default off).

    Raises:
        ValueError: an unknown spelling (``runtime.env.parse_flag``).
    """
    return flag(ASCEND_ENV, False, environ)


def is_vllm_ascend_platform(platform: Any) -> bool:
    """Whether ``platform`` (an instance or a class) is vllm-ascend's ``NPUPlatform`` or a subclass."""
    cls = platform if isinstance(platform, type) else type(platform)
    return any((c.__module__, c.__name__) == NPU_PLATFORM for c in cls.__mro__)


def vllm_ascend_installed() -> bool:
    """Whether vllm-ascend's platform plugin entry point is installed (nothing is imported)."""
    return any(
        e.value.replace(" ", "") == ASCEND_PLATFORM_ENTRY_POINT
        for e in importlib.metadata.entry_points(group="vllm.platform_plugins")
    )


def integration_plan(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Which of our parts vLLM would run beside vllm-ascend on this host, and why (``vat info``).

    Reads the switches and the installed entry points; imports neither vLLM nor vllm-ascend.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        ``{"vllm_ascend_installed", "opted_in", "parts": {part: {"active", "why"}}}``; ``active``
        is what our general plugin would do in a vLLM process on this host.

    Raises:
        ValueError: a switch with an unknown spelling (its name in the message).
    """
    from vllm_ascend_triton.plugin.register import SWITCHES

    env = os.environ if environ is None else environ
    installed = vllm_ascend_installed()
    on = opted_in(env)
    parts: dict[str, dict[str, Any]] = {}
    notes = {
        "attention": "VAT_TRITON_ATTN for layers it supports; vllm-ascend's table for MLA, sparse, "
        "quantized KV, head size > 256, encoder",
        "rope": "our kernel for the 8 cos/sin-cache rope classes and MRoPE (over vllm-ascend's "
        "four rope classes' __init__)",
        "moe": "our routing + experts for vllm-ascend's unquantized MoE method without expert "
        "parallelism (all-gather path); quantized methods, EP (MC2/all-to-all), EPLB stay vllm-ascend's",
        "scheduler": "BalanceScheduler when the balance switch is on and no scheduler class is set",
    }
    for part, switch in SWITCHES.items():
        part_on = flag(switch, True, env)
        if not installed:
            why = "vllm-ascend not installed: on other platforms see docs/vllm.md"
            active = False
        elif not on:
            why = f"{ASCEND_ENV} is off: vllm-ascend runs exactly as without this package"
            active = False
        elif not part_on:
            why = f"{switch}=0"
            active = False
        else:
            why = notes[part]
            active = True
        parts[part] = {"active": active, "why": why}
    return {"vllm_ascend_installed": installed, "opted_in": on, "parts": parts}


# ---------------------------------------------------------------------------------------------
# The platform subclass
# ---------------------------------------------------------------------------------------------

_PLATFORM_CLASSES: dict[type, type] = {}


def platform_class(base: type) -> type:
    """Our subclass of vllm-ascend's platform class ``base`` (created once per base).

    Raises:
        TypeError: ``base`` is not vllm-ascend's ``NPUPlatform`` or a subclass of it.
    """
    if not is_vllm_ascend_platform(base):
        raise TypeError(f"base must be vllm-ascend's NPUPlatform or a subclass, got {base!r}")
    if getattr(base, "_vat_ascend", False):
        return base
    cached = _PLATFORM_CLASSES.get(base)
    if cached is not None:
        return cached

    class VatAscendPlatform(base):  # type: ignore[valid-type, misc]
        """vllm-ascend's platform with our attention backend and worker (module docstring)."""

        _vat_ascend = True

        @classmethod
        def get_attn_backend_cls(
            cls, selected_backend: Any, attn_selector_config: Any, num_heads: int | None = None
        ) -> str:
            from vllm_ascend_triton.plugin import register

            if register.part_enabled("attention"):
                from vllm_ascend_triton.plugin.attention_backend import unsupported_reason

                reason = unsupported_reason(attn_selector_config)
                if reason is None:
                    _log_once(
                        "attn", logging.INFO, "vllm-ascend-triton: attention layers run VAT_TRITON_ATTN"
                    )
                    return ATTENTION_BACKEND_CLS
                _log_once(
                    f"attn:{reason}",
                    logging.INFO,
                    "vllm-ascend-triton: attention layer keeps vllm-ascend's backend: %s",
                    reason,
                )
            return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)

        @classmethod
        def check_and_update_config(cls, vllm_config: Any) -> None:
            super().check_and_update_config(vllm_config)
            update_config(vllm_config)

    VatAscendPlatform.__module__ = __name__
    VatAscendPlatform.__qualname__ = "VatAscendPlatform"
    _PLATFORM_CLASSES[base] = VatAscendPlatform
    return VatAscendPlatform


def activate(platform: Any) -> dict[str, list[str]]:
    """Make ``platform`` (vllm-ascend's resolved platform object) an instance of our subclass of
    its class, so every holder of the object sees our overrides (called by ``register.register``
    in each vLLM process when ``VAT_ASCEND=1``).

    Args:
        platform: vLLM's ``current_platform``.

    Returns:
        What is switched on, per part (for the registration log line).

    Raises:
        TypeError: ``platform`` is not vllm-ascend's.
    """
    from vllm_ascend_triton.plugin import register

    cls = platform_class(type(platform))
    if type(platform) is not cls:
        platform.__class__ = cls
    parts: dict[str, list[str]] = {}
    if register.part_enabled("attention"):
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

        from vllm_ascend_triton.plugin.attention_backend import BACKEND_NAME

        # vLLM's attention layer looks its backend up by name in this registry.
        if BACKEND_NAME not in AttentionBackendEnum._member_map_:
            register_backend(BACKEND_NAME, ATTENTION_BACKEND_CLS)
        parts["attention"] = ["VAT_TRITON_ATTN where supported"]
    if register.part_enabled("rope"):
        parts["rope"] = ["rope classes after vllm-ascend's registration (worker)"]
    if register.part_enabled("moe"):
        parts["moe"] = ["RoutedExperts after vllm-ascend's registration (worker)"]
    if register.part_enabled("scheduler"):
        parts["scheduler"] = ["BalanceScheduler when the balance switch is on"]
    return parts


def update_config(vllm_config: Any) -> None:
    """Our config changes after vllm-ascend's ``check_and_update_config``: the worker class that
    installs our ops, our ops switched on, the balance scheduler choice."""
    from vllm_ascend_triton.plugin import register

    if vllm_config.model_config is None:
        return
    parallel = vllm_config.parallel_config
    if register.part_enabled("rope") or register.part_enabled("moe"):
        current = parallel.worker_cls
        if not isinstance(current, str) or current in ("", "auto"):
            _log_once(
                "worker",
                logging.WARNING,
                "vllm-ascend-triton: no worker class chosen by vllm-ascend (%r): rope and MoE stay "
                "vllm-ascend's",
                current,
            )
        elif not current.startswith(f"{__name__}.{WORKER_PREFIX}"):
            parallel.worker_cls = our_worker_cls(current)
    compilation = vllm_config.compilation_config
    if "all" not in compilation.custom_ops and register.part_enabled("rope"):
        from vllm_ascend_triton.plugin.ops import ROPE_OPS

        for name in ROPE_OPS:
            if f"-{name}" not in compilation.custom_ops and f"+{name}" not in compilation.custom_ops:
                compilation.custom_ops.append(f"+{name}")
    register.choose_scheduler(vllm_config)


# ---------------------------------------------------------------------------------------------
# The worker: our ops after vllm-ascend's registration
# ---------------------------------------------------------------------------------------------

_WORKER_CLASSES: dict[str, type] = {}


def our_worker_cls(base: str) -> str:
    """The qualified name of our subclass of the worker class ``base`` (a qualified name)."""
    return f"{__name__}.{WORKER_PREFIX}{base.replace('.', '_DOT_')}"


def __getattr__(name: str) -> Any:
    # The worker class derives from vllm-ascend's, importable only where vllm-ascend is: built when
    # vLLM resolves our_worker_cls(...) in a worker process, not when this module is imported.
    if name.startswith(WORKER_PREFIX):
        return worker_class(name.removeprefix(WORKER_PREFIX).replace("_DOT_", "."))
    if name in ("VatAscendAttentionBackend", "VatAscendAttentionImpl"):
        backend, impl = _attention_classes()
        return backend if name == "VatAscendAttentionBackend" else impl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def worker_class(base_name: str = ASCEND_WORKER_CLS) -> type:
    """Our subclass of the worker class ``base_name`` (vllm-ascend's ``NPUWorker`` by default;
    built once per base): after the base's ``__init__`` (where vllm-ascend registers its ops),
    :func:`install_ops`."""
    cached = _WORKER_CLASSES.get(base_name)
    if cached is not None:
        return cached
    from vllm.utils.import_utils import resolve_obj_by_qualname

    base = resolve_obj_by_qualname(base_name)

    class VatNPUWorker(base):  # type: ignore[valid-type, misc]
        """vllm-ascend's worker; after its op registration, ours replace the ones we cover."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            installed = install_ops()
            logger.info("vllm-ascend-triton: ops installed after vllm-ascend's registration: %s", installed)

    name = our_worker_cls(base_name).rsplit(".", 1)[1]
    VatNPUWorker.__module__ = __name__
    VatNPUWorker.__name__ = VatNPUWorker.__qualname__ = name
    _WORKER_CLASSES[base_name] = VatNPUWorker
    return VatNPUWorker


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def install_ops() -> dict[str, list[str]]:
    """Replace, in vLLM's out-of-tree registry, the rope classes we cover and ``RoutedExperts``
    by our subclasses of what is registered there (idempotent).

    Returns:
        ``{"rope": [names], "moe": [names], "not_installed": [reasons]}``.
    """
    from vllm.model_executor.custom_op import op_registry_oot

    from vllm_ascend_triton.plugin import register

    out: dict[str, list[str]] = {}
    if register.part_enabled("rope"):
        from vllm.model_executor.layers import rotary_embedding as vllm_rope

        from vllm_ascend_triton.plugin.ops import ROPE_OPS, replacement_class

        for name in ROPE_OPS:
            current = op_registry_oot.get(name)
            ours = replacement_class(name)
            if current is None:
                cls = ours
            elif issubclass(current, ours):
                cls = current  # already installed in this process
            elif not issubclass(current, getattr(vllm_rope, name)):
                out.setdefault("not_installed", []).append(
                    f"{name}: registered {_qualname(current)} does not derive from vLLM's class"
                )
                continue
            else:
                # Our forwards first, then the registered class (its __init__, its buffers).
                cls = type(f"Vat{current.__name__}", (ours, current), {"__module__": __name__})
            cls.name = name  # what register_oot sets
            op_registry_oot[name] = cls
            out.setdefault("rope", []).append(name)
    if register.part_enabled("moe"):
        current = op_registry_oot.get(ROUTED_EXPERTS)
        if current is None:
            out.setdefault("not_installed", []).append(
                f"{ROUTED_EXPERTS}: vllm-ascend registered none, MoE stays vLLM's"
            )
        else:
            cls = routed_experts_class(current)
            cls.name = ROUTED_EXPERTS
            op_registry_oot[ROUTED_EXPERTS] = cls
            out.setdefault("moe", []).append(ROUTED_EXPERTS)
    return out


# ---------------------------------------------------------------------------------------------
# MoE
# ---------------------------------------------------------------------------------------------

_EXPERTS_CLASSES: dict[type, type] = {}
_METHOD_CLASSES: dict[type, type] = {}


def _is_ascend_unquantized(method: Any) -> bool:
    return (type(method).__module__, type(method).__name__) == ASCEND_UNQUANTIZED_MOE


def routing_unsupported(layer: Any) -> str | None:
    """Why our routing does not serve this vllm-ascend routed-experts layer, or None."""
    from vllm_ascend_triton.plugin.moe import layer_unsupported

    if getattr(layer, "log2phy", None) is not None or getattr(layer, "dynamic_eplb", False):
        return "EPLB (logical -> physical expert map)"
    if getattr(layer, "mix_placement", False):
        return "shared experts mixed into the routed ones (mix_placement)"
    return layer_unsupported(layer)


def experts_unsupported(layer: Any) -> str | None:
    """Why our expert kernel does not serve this vllm-ascend routed-experts layer, or None."""
    from vllm_ascend_triton.plugin.moe import config_unsupported, layer_unsupported

    method = layer.quant_method
    if not _is_ascend_unquantized(method):
        return f"quant method {type(method).__name__} (only vllm-ascend's unquantized method is replaced)"
    if getattr(method, "dynamic_eplb", False):
        return "dynamic EPLB"
    parallel = getattr(layer.moe_config, "moe_parallel_config", None)
    if parallel is not None and getattr(parallel, "use_ep", False):
        return "expert parallelism (vllm-ascend dispatches with MC2 / all-to-all inside its experts call)"
    return config_unsupported(layer.moe_config) or layer_unsupported(layer)


def route(layer: Any, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert weights (float32) and ids of a routed-experts layer through our kernels'
    custom ops (``vat::grouped_topk`` / ``vat::fused_topk``), vLLM's routing semantics for the
    layer's settings (grouped or not, correction bias, scaling factor)."""
    num_groups = layer.num_expert_group or 1
    if layer.use_grouped_topk and num_groups > 1:
        return torch.ops.vat.grouped_topk(
            router_logits,
            layer.top_k,
            layer.renormalize,
            num_groups,
            layer.topk_group or num_groups,
            layer.scoring_func,
            layer.e_score_correction_bias,
            float(layer.routed_scaling_factor),
        )
    return torch.ops.vat.fused_topk(
        router_logits,
        layer.top_k,
        layer.renormalize,
        layer.scoring_func,
        layer.e_score_correction_bias,
        float(layer.routed_scaling_factor),
    )


def routed_experts_class(base: type) -> type:
    """Our subclass of the ``RoutedExperts`` class vllm-ascend registered (``AscendRoutedExperts``)."""
    if getattr(base, "_vat_ascend", False):
        return base
    cached = _EXPERTS_CLASSES.get(base)
    if cached is not None:
        return cached

    class VatRoutedExperts(base):  # type: ignore[valid-type, misc]
        _vat_ascend = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            name = getattr(self, "layer_name", "?")
            self._vat_routing_reason = routing_unsupported(self)
            if self._vat_routing_reason is not None:
                logger.info(
                    "vllm-ascend-triton: MoE layer %s keeps vllm-ascend's routing: %s",
                    name,
                    self._vat_routing_reason,
                )
            reason = experts_unsupported(self)
            if reason is None:
                method = self.quant_method
                ours = ascend_method_class(type(method))(
                    self.moe_config, tid2eid=getattr(self, "tid2eid", None)
                )
                self._replace_quant_method(ours)
            else:
                logger.info("vllm-ascend-triton: MoE layer %s keeps vllm-ascend's experts: %s", name, reason)

        def _select_experts(
            self, hidden_states: torch.Tensor, router_logits: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            force_balance = kwargs.get("enable_force_load_balance", args[0] if args else False)
            if self._vat_routing_reason is not None or force_balance:
                # vllm-ascend's own path, incl. its random ids in the profile run.
                return super()._select_experts(hidden_states, router_logits, *args, **kwargs)
            weights, ids = route(self, router_logits)
            return weights.to(hidden_states.dtype), ids

    VatRoutedExperts.__name__ = VatRoutedExperts.__qualname__ = f"Vat{base.__name__}"
    VatRoutedExperts.__module__ = __name__
    _EXPERTS_CLASSES[base] = VatRoutedExperts
    return VatRoutedExperts


def _experts_result_type() -> type | None:
    import importlib

    try:
        module = importlib.import_module(ASCEND_EXPERTS_RESULT[0])
    except ImportError:
        return None
    return getattr(module, ASCEND_EXPERTS_RESULT[1], None)


def ascend_method_class(base: type) -> type:
    """Our subclass of vllm-ascend's ``AscendUnquantizedFusedMoEMethod``: experts through our
    ``fused_experts`` on vLLM's weight layout."""
    cached = _METHOD_CLASSES.get(base)
    if cached is not None:
        return cached
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod,
    )

    result_type = _experts_result_type()

    class VatAscendUnquantizedFusedMoEMethod(base):  # type: ignore[valid-type, misc]
        def process_weights_after_loading(self, layer: Any) -> None:
            from vllm_ascend_triton.plugin import counters

            counters.label_dp_rank_from_vllm()
            # vLLM's base hook only: our kernel reads the checkpoint layout (w13 [E, 2I, H],
            # w2 [E, H, I]); vllm-ascend's transposes and NZ casts serve its grouped matmuls.
            super(UnquantizedFusedMoEMethod, self).process_weights_after_loading(layer)

        def apply(
            self,
            layer: Any,
            x: torch.Tensor,
            topk_weights: torch.Tensor,
            topk_ids: torch.Tensor,
            shared_experts: Any = None,
            shared_experts_input: torch.Tensor | None = None,
        ) -> Any:
            # Counted (and, in tests, mutated) inside the op.
            out = torch.ops.vat.fused_experts(
                x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids, "silu", None,
                int(layer.global_num_experts),
            )  # fmt: skip
            return out if result_type is None else result_type(routed_out=out)

    VatAscendUnquantizedFusedMoEMethod.__module__ = __name__
    VatAscendUnquantizedFusedMoEMethod.__qualname__ = "VatAscendUnquantizedFusedMoEMethod"
    _METHOD_CLASSES[base] = VatAscendUnquantizedFusedMoEMethod
    return VatAscendUnquantizedFusedMoEMethod


# ---------------------------------------------------------------------------------------------
# Attention: vllm-ascend's KV-cache contract
# ---------------------------------------------------------------------------------------------


_ATTENTION_CLASSES: tuple[type, type] | None = None


def kv_pair(kv_cache: Any, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's cache as ``[num_blocks, block_size, num_kv_heads, head_size]`` K and V.

    Args:
        kv_cache: as vllm-ascend's runner hands it, a ``(key_cache, value_cache)`` pair; or one
            tensor of our ``get_kv_cache_shape`` (``[2, num_blocks, ...]``); or vLLM 0.32's own
            packed ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (a runner that
            allocates the cache vLLM's way).
        head_size: the layer's head size.

    Returns:
        ``(key_cache, value_cache)``, the given tensors or views of them (no copies).

    Raises:
        ValueError: any other layout.
    """
    if isinstance(kv_cache, (tuple, list)) and len(kv_cache) == 2:
        return kv_cache[0], kv_cache[1]
    if isinstance(kv_cache, torch.Tensor) and kv_cache.dim() == 5 and kv_cache.shape[0] == 2:
        return kv_cache[0], kv_cache[1]
    if isinstance(kv_cache, torch.Tensor) and kv_cache.dim() == 4 and kv_cache.shape[-1] == 2 * head_size:
        from vllm_ascend_triton.plugin.custom_ops import split_kv_cache

        return split_kv_cache(kv_cache, head_size)
    shape = tuple(kv_cache.shape) if isinstance(kv_cache, torch.Tensor) else type(kv_cache).__name__
    raise ValueError(
        f"kv_cache must be a (K, V) pair, a [2, blocks, block, heads, {head_size}] tensor or vLLM's "
        f"[blocks, heads, block, {2 * head_size}] one, got {shape}"
    )


def _attention_classes() -> tuple[type, type]:
    global _ATTENTION_CLASSES
    if _ATTENTION_CLASSES is not None:
        return _ATTENTION_CLASSES
    from vllm_ascend_triton.plugin.attention_backend import VatAttentionBackend, VatAttentionImpl

    class VatAscendAttentionImpl(VatAttentionImpl):
        """Our impl on vllm-ascend's (K, V) cache pair (validation and settings: the base's)."""

        def do_kv_cache_update(
            self,
            layer: Any,
            key: torch.Tensor,
            value: torch.Tensor,
            kv_cache: Any,
            slot_mapping: torch.Tensor,
        ) -> None:
            key_cache, value_cache = kv_pair(kv_cache, self.head_size)
            n = slot_mapping.shape[0]
            torch.ops.vat.reshape_and_cache(key[:n], value[:n], key_cache, value_cache, slot_mapping)

        def forward(
            self,
            layer: Any,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            kv_cache: Any,
            attn_metadata: Any,
            output: torch.Tensor,
            output_scale: torch.Tensor | None = None,
            output_block_scale: torch.Tensor | None = None,
        ) -> torch.Tensor:
            if output_scale is not None or output_block_scale is not None:
                raise NotImplementedError("VAT_TRITON_ATTN has no fused output quantization")
            if attn_metadata is None:  # profiling run
                return output.fill_(0)
            m = attn_metadata
            n = m.num_actual_tokens
            key_cache, value_cache = kv_pair(kv_cache, self.head_size)
            if self.alibi_slopes is not None and self.alibi_slopes.device != query.device:
                self.alibi_slopes = self.alibi_slopes.to(query.device)
            out = output[:n].view(n, self.num_heads, self.head_size)
            torch.ops.vat.unified_attention(
                query[:n].view(n, self.num_heads, self.head_size), key_cache, value_cache, out,
                m.query_start_loc, m.max_query_len, m.seq_lens, m.max_seq_len, self.scale, m.causal,
                self.sliding_window[0], self.sliding_window[1], m.block_table, self.logits_soft_cap,
                self.alibi_slopes, self.sinks,
            )  # fmt: skip
            return output

    class VatAscendAttentionBackend(VatAttentionBackend):
        @staticmethod
        def get_impl_cls() -> type:
            return VatAscendAttentionImpl

        @staticmethod
        def get_kv_cache_shape(
            num_blocks: int, block_size: int, num_kv_heads: int, head_size: int, cache_dtype_str: str = "auto"
        ) -> tuple[int, ...]:
            return (2, num_blocks, block_size, num_kv_heads, head_size)

    for cls in (VatAscendAttentionImpl, VatAscendAttentionBackend):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    _ATTENTION_CLASSES = (VatAscendAttentionBackend, VatAscendAttentionImpl)
    return _ATTENTION_CLASSES


def __dir__() -> list[str]:
    return sorted([*globals(), "VatAscendAttentionBackend", "VatAscendAttentionImpl"])
