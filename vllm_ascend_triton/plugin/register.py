"""The two vLLM entry points: :func:`register` (``vllm.general_plugins``) and
:func:`interpreter_platform` (``vllm.platform_plugins``).

Importing this module imports neither vLLM nor Triton; the functions act only when vLLM calls
them.

What :func:`register` does, once per process (vLLM runs general plugins in the front end, the
engine cores and the workers), depends on the platform vLLM resolved:

- our interpreter platform (``VAT_PLATFORM=interpreter``): registers everything below;
- vllm-ascend's ``NPUPlatform`` (found by class in the MRO, so a stand-in exercises the same
  path): nothing at all unless ``VAT_ASCEND=1`` (one log line says how to opt in); with it,
  ``ascend.activate`` (our subclass of its platform; see ``ascend.py``);
- any other platform (stock CPU, CUDA, ...): no op or backend (our kernels would need the
  interpreter or an NPU there), only the scheduler default and the env-var names.

Parts, each with a switch (read by ``runtime.env.flag``: ``0``/``false``/``no``/``off`` disables
it; default on):

- ``VAT_PLUGIN_ROPE``: ``CustomOp.register_oot`` of the cos/sin-cache rotary family and MRoPE
  (``ops.py``);
- ``VAT_PLUGIN_MOE``: ``UnquantizedFusedMoEMethod`` through our routing and expert kernels
  (``moe.py``);
- ``VAT_PLUGIN_ATTENTION``: ``VAT_TRITON_ATTN`` in vLLM's attention-backend registry
  (``attention_backend.py``);
- ``VAT_PLUGIN_SCHEDULER``: with the balance switch on (``VLLM_ASCEND_BALANCE_SCHEDULING=1``)
  and no scheduler class chosen, vLLM runs ``vllm_ascend_triton.scheduler.BalanceScheduler``;
  a user's own ``--scheduler-cls`` is kept (one log line).

Our ``VLLM_*`` variables are added to ``vllm.envs.environment_variables``, so vLLM's environment
validation knows them (it warns on unknown ``VLLM_*`` names and refuses them in strict mode).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from vllm_ascend_triton.runtime.env import flag

logger = logging.getLogger("vllm.vllm_ascend_triton.plugin")

PLATFORM_ENV = "VAT_PLATFORM"
PLATFORM_CLS = "vllm_ascend_triton.plugin.platform.InterpreterPlatform"
BALANCE_ENV = "VLLM_ASCEND_BALANCE_SCHEDULING"
BALANCE_SCHEDULER_CLS = "vllm_ascend_triton.scheduler.BalanceScheduler"
SWITCHES = {
    "rope": "VAT_PLUGIN_ROPE",
    "moe": "VAT_PLUGIN_MOE",
    "attention": "VAT_PLUGIN_ATTENTION",
    "scheduler": "VAT_PLUGIN_SCHEDULER",
}
# The VLLM_* variables this package reads; made known to vLLM's environment validation.
OUR_VLLM_ENV_VARS = (BALANCE_ENV,)

_lock = threading.Lock()
_done = False
_registered: dict[str, list[str]] = {}


def part_enabled(part: str) -> bool:
    """Whether the plugin part ``part`` (rope, moe, attention, scheduler) is switched on.

    Raises:
        ValueError: an unknown part, or its switch has an unknown spelling.
    """
    if part not in SWITCHES:
        raise ValueError(f"unknown plugin part {part!r}; known: {', '.join(SWITCHES)}")
    return flag(SWITCHES[part], True)


def balance_switch_on(vllm_config: Any = None) -> bool:
    """The DP balance switch, read exactly as the scheduler reads it (our config key, vllm-ascend's
    two keys, then VLLM_ASCEND_BALANCE_SCHEDULING)."""
    from vllm_ascend_triton.scheduler.compat import balance_enabled

    return balance_enabled(vllm_config)


def interpreter_requested() -> bool:
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == "interpreter"


def interpreter_platform() -> str | None:
    """``vllm.platform_plugins`` entry point: our interpreter platform when
    ``VAT_PLATFORM=interpreter``, else None (vLLM then picks its own platform).

    When active it selects the interpreter backend for this process and, through the environment
    (``TRITON_INTERPRET=1``, ``VAT_BACKEND=interpreter``), for the engine processes vLLM spawns
    afterwards. Triton decides when a kernel is *defined* whether it is interpreted, and
    ``import vllm`` imports Triton before any plugin runs, so in the process that resolves the
    platform first (the front end) Triton's own jit helpers (``tl.sum``, ``tl.cumsum``, ...) are
    already compiled-mode objects; the engine core and workers are spawned later with the
    environment set and are fine. A model run in that first process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) needs ``TRITON_INTERPRET=1`` set before Python
    starts; the platform refuses that case with a clear error (``platform.py``).
    """
    if not interpreter_requested():
        return None
    from vllm_ascend_triton.plugin.ascend import vllm_ascend_installed

    if vllm_ascend_installed():
        # vLLM activates one platform plugin only ("Only one platform plugin can be activated").
        logger.error(
            "%s=interpreter ignored: vllm-ascend's platform plugin is installed and vLLM runs one "
            "platform plugin; beside vllm-ascend use VAT_ASCEND=1 (docs/vllm.md)",
            PLATFORM_ENV,
        )
        return None
    forced = os.environ.get("VAT_BACKEND", "").strip().lower()
    if forced and forced != "interpreter":
        logger.error("%s=interpreter needs VAT_BACKEND unset or 'interpreter', got %r", PLATFORM_ENV, forced)
        raise ValueError(f"{PLATFORM_ENV}=interpreter conflicts with VAT_BACKEND={forced}")
    from vllm_ascend_triton.runtime.backend import select_backend

    os.environ["VAT_BACKEND"] = "interpreter"
    select_backend("interpreter")  # sets TRITON_INTERPRET=1 (inherited by spawned processes)
    return PLATFORM_CLS


def _platform_kind(platform: Any) -> str | None:
    from vllm_ascend_triton.plugin.ascend import is_vllm_ascend_platform

    if type(platform).__module__ == "vllm_ascend_triton.plugin.platform":
        return "interpreter"
    if is_vllm_ascend_platform(platform):
        return "ascend"
    return None


def _make_env_vars_known() -> None:
    import vllm.envs as envs

    for name in OUR_VLLM_ENV_VARS:
        envs.environment_variables.setdefault(name, lambda name=name: os.environ.get(name))


def _register_ops(parts: dict[str, list[str]]) -> None:
    from vllm.model_executor.custom_op import CustomOp, op_registry_oot

    def _add(name: str, cls: type, part: str) -> None:
        existing = op_registry_oot.get(name)
        if existing is cls:
            parts.setdefault(part, []).append(name)
            return
        if existing is not None:
            parts.setdefault("already_registered_by_others", []).append(name)
            return
        CustomOp.register_oot(_decorated_op_cls=cls, name=name)
        parts.setdefault(part, []).append(name)

    if part_enabled("rope"):
        from vllm_ascend_triton.plugin.ops import ROPE_OPS, replacement_class

        for name in ROPE_OPS:
            _add(name, replacement_class(name), "rope")
    if part_enabled("moe"):
        from vllm_ascend_triton.plugin.moe import MOE_OP_NAME, make_method_class

        _add(MOE_OP_NAME, make_method_class(), "moe")
        # Compressed-tensors W8A8 int8 MoE layers on our int8 expert kernels (plugin/moe_w8a8.py).
        from vllm_ascend_triton.plugin.moe_w8a8 import install as install_w8a8_moe

        parts["moe_w8a8"] = install_w8a8_moe()


def _register_attention_backend(parts: dict[str, list[str]]) -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_ascend_triton.plugin.attention_backend import BACKEND_NAME

    if BACKEND_NAME not in AttentionBackendEnum._member_map_:
        register_backend(BACKEND_NAME, "vllm_ascend_triton.plugin.attention_backend.VatAttentionBackend")
    from vllm_ascend_triton.plugin.mla_backend import BACKEND_NAME as MLA_BACKEND_NAME
    from vllm_ascend_triton.plugin.mla_backend import BACKEND_PATH as MLA_BACKEND_PATH

    if MLA_BACKEND_NAME not in AttentionBackendEnum._member_map_:
        register_backend(MLA_BACKEND_NAME, MLA_BACKEND_PATH)
    parts["attention"] = [BACKEND_NAME, MLA_BACKEND_NAME]


def choose_scheduler(vllm_config: Any) -> str | None:
    """Set ``BalanceScheduler`` as vLLM's scheduler class when the balance switch is on and the
    user chose none; keep a user's choice (logged). Returns the class now configured, if ours."""
    if not part_enabled("scheduler") or not balance_switch_on(vllm_config):
        return None
    sched = vllm_config.scheduler_config
    current = sched.scheduler_cls
    if current is None:
        sched.scheduler_cls = BALANCE_SCHEDULER_CLS
        logger.info("vllm-ascend-triton: balance scheduling on: scheduler class %s", BALANCE_SCHEDULER_CLS)
        return BALANCE_SCHEDULER_CLS
    name = current if isinstance(current, str) else f"{current.__module__}.{current.__qualname__}"
    if name in (BALANCE_SCHEDULER_CLS, "vllm_ascend_triton.scheduler.balance.BalanceScheduler"):
        return BALANCE_SCHEDULER_CLS  # ours already (chosen here, or the config was re-checked)
    logger.info("vllm-ascend-triton: balance scheduling on; keeping the user's scheduler class %s", name)
    return None


def _install_scheduler_default() -> None:
    """On platforms other than ours (no config hook there), make vLLM's default scheduler class
    answer ``BalanceScheduler`` while the balance switch is on and no class was chosen."""
    from vllm.config.scheduler import SchedulerConfig

    original = SchedulerConfig.get_scheduler_cls
    if getattr(original, "_vat_balance_default", False):
        return

    def get_scheduler_cls(self: Any) -> Any:
        if self.scheduler_cls is None and part_enabled("scheduler") and balance_switch_on():
            from vllm_ascend_triton.scheduler import BalanceScheduler

            logger.info("vllm-ascend-triton: balance scheduling on: %s", BALANCE_SCHEDULER_CLS)
            return BalanceScheduler
        return original(self)

    get_scheduler_cls._vat_balance_default = True  # type: ignore[attr-defined]
    SchedulerConfig.get_scheduler_cls = get_scheduler_cls  # type: ignore[method-assign]


def register() -> None:
    """``vllm.general_plugins`` entry point (idempotent; see the module docstring)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        from vllm.platforms import current_platform

        kind = _platform_kind(current_platform)
        _registered.clear()
        if kind == "ascend":
            from vllm_ascend_triton.plugin import ascend

            if not ascend.opted_in():
                logger.info(
                    "vllm-ascend-triton: vllm-ascend's platform %s detected and %s is off: this "
                    "package changes nothing; set %s=1 to run its attention, rope, MoE and "
                    "scheduler beside vllm-ascend (docs/vllm.md)",
                    type(current_platform).__name__,
                    ascend.ASCEND_ENV,
                    ascend.ASCEND_ENV,
                )
                return
        _make_env_vars_known()
        parts: dict[str, list[str]] = {}
        if kind is not None:
            from vllm_ascend_triton.plugin import counters, custom_ops, mutate

            # Test hooks read their variables once here, never per call.
            counters.configure()
            mutate.configure()
            parts["custom_ops"] = [f"{custom_ops.NAMESPACE}::{n}" for n in custom_ops.register_all()]
        if kind == "ascend":
            from vllm_ascend_triton.plugin import ascend

            parts.update(ascend.activate(current_platform))
            _registered.update(parts)
            logger.info(
                "vllm-ascend-triton registered beside vllm-ascend (%s=1): %s", ascend.ASCEND_ENV, parts
            )
            return
        if kind is not None:
            _register_ops(parts)
            if part_enabled("attention"):
                _register_attention_backend(parts)
        if kind is None and part_enabled("scheduler"):
            _install_scheduler_default()
            parts["scheduler"] = ["BalanceScheduler when the balance switch is on"]
        elif kind == "interpreter" and part_enabled("scheduler"):
            parts["scheduler"] = ["BalanceScheduler when the balance switch is on"]
        _registered.update(parts)
        if kind is None:
            logger.info(
                "vllm-ascend-triton: platform %s is neither an Ascend NPU platform nor ours "
                "(VAT_PLATFORM=interpreter): no kernels registered; %s",
                type(current_platform).__name__,
                parts or "nothing else",
            )
        else:
            logger.info("vllm-ascend-triton registered on the %s platform: %s", kind, parts)


def registered() -> dict[str, list[str]]:
    """What :func:`register` registered in this process (empty before it ran)."""
    return {k: list(v) for k, v in _registered.items()}
