"""Test hook: deliberately perturb one of our ops inside vLLM, so an end-to-end comparison can
be shown to fail when an op is wrong (a check that cannot fail proves nothing).

``VAT_PLUGIN_MUTATE=<op>:<factor>`` (op one of ``rope``, ``moe``, ``attention``) scales that
op's output by ``factor``. Unset (the default) means no perturbation; read once per process.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

MUTATE_ENV = "VAT_PLUGIN_MUTATE"
MUTABLE_OPS = ("rope", "moe", "attention")

logger = logging.getLogger(f"vllm.{__name__}")


@functools.cache
def _mutation() -> tuple[str, float] | None:
    spec = os.environ.get(MUTATE_ENV, "").strip()
    if not spec:
        return None
    op, _, factor = spec.partition(":")
    if op not in MUTABLE_OPS:
        raise ValueError(f"{MUTATE_ENV}={spec!r}: op must be one of {MUTABLE_OPS}")
    try:
        value = float(factor)
    except ValueError:
        raise ValueError(f"{MUTATE_ENV}={spec!r}: expected <op>:<factor>, e.g. attention:0.5") from None
    logger.warning("vllm-ascend-triton: TEST MUTATION ACTIVE, %s output scaled by %g", op, value)
    return op, value


def maybe_mutate(op: str, *outputs: torch.Tensor | None) -> None:
    """Scale ``outputs`` in place when the mutation hook targets ``op``."""
    mutation = _mutation()
    if mutation is None or mutation[0] != op:
        return
    for t in outputs:
        if t is not None:
            t.mul_(mutation[1])
