"""Test hook: deliberately perturb one of our ops inside vLLM, so an end-to-end comparison can
be shown to fail when an op is wrong (a check that cannot fail proves nothing).

``VAT_PLUGIN_MUTATE=<op>:<factor>`` (op one of ``rope``, ``moe``, ``attention``) scales that
op's output by ``factor``. Read once per process, by :func:`configure` (the plugin's
registration calls it); the ops test :data:`ACTIVE`, a module attribute, so the hook costs one
attribute read per call when off.
"""

from __future__ import annotations

import logging
import os

import torch

MUTATE_ENV = "VAT_PLUGIN_MUTATE"
MUTABLE_OPS = ("rope", "moe", "attention")

logger = logging.getLogger(f"vllm.{__name__}")

ACTIVE = False
_mutation: tuple[str, float] | None = None


def parse(spec: str) -> tuple[str, float] | None:
    """``<op>:<factor>`` as ``(op, factor)``; empty means None.

    Raises:
        ValueError: unknown op or a factor that is not a number (the message names the variable).
    """
    spec = spec.strip()
    if not spec:
        return None
    op, _, factor = spec.partition(":")
    if op not in MUTABLE_OPS:
        raise ValueError(f"{MUTATE_ENV}={spec!r}: op must be one of {MUTABLE_OPS}")
    try:
        value = float(factor)
    except ValueError:
        raise ValueError(f"{MUTATE_ENV}={spec!r}: expected <op>:<factor>, e.g. attention:0.5") from None
    return op, value


def configure(spec: str | None = None) -> tuple[str, float] | None:
    """Set the mutation from ``spec`` (default: ``VAT_PLUGIN_MUTATE``); returns it."""
    global ACTIVE, _mutation
    _mutation = parse(os.environ.get(MUTATE_ENV, "") if spec is None else spec)
    ACTIVE = _mutation is not None
    if _mutation is not None:
        logger.warning("vllm-ascend-triton: TEST MUTATION ACTIVE, %s output scaled by %g", *_mutation)
    return _mutation


def apply(op: str, *outputs: torch.Tensor | None) -> None:
    """Scale ``outputs`` in place when the mutation targets ``op``."""
    if _mutation is None or _mutation[0] != op:
        return
    for t in outputs:
        if t is not None:
            t.mul_(_mutation[1])
