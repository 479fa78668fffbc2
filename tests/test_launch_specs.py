"""What `vat compile` lowers is what the host APIs launch: for every variant, the specs recorded in
a dry run (codegen's source) equal the specs the same call launches when it runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vllm_ascend_triton import kernels
from vllm_ascend_triton.kernels import FAMILIES
from vllm_ascend_triton.kernels._variants import family_variants
from vllm_ascend_triton.runtime.device import plan_for
from vllm_ascend_triton.runtime.launch import record_launches

_CONVERTED = [f for f in FAMILIES if (Path(kernels.__file__).parent / f / "variants.py").is_file()]
_VARIANTS = [v for f in _CONVERTED for v in family_variants(f)]


def _comparable(spec, bf16_as_fp32: bool = False) -> dict:
    sig = spec.signature()
    if bf16_as_fp32:  # the interpreter's bf16 shim runs bf16 tensors as fp32 copies
        sig = {k: v.replace("bf16", "fp32") for k, v in sig.items()}
    return {
        "name": spec.name,
        "kernel": spec.kernel_ref,
        "grid": spec.grid,
        "signature": sig,
        "constexprs": dict(spec.constexprs),
        "options": dict(spec.options),
        "config": dict(spec.config),
    }


def test_every_family_has_variants():
    assert _CONVERTED == list(FAMILIES), f"no variants module: {set(FAMILIES) - set(_CONVERTED)}"


@pytest.mark.parametrize("variant", _VARIANTS, ids=lambda v: f"{v.family}-{v.label}")
def test_compiled_spec_equals_launched_spec(variant):
    # One SKU: planning for another changes grids and tiles, not the path from call to spec.
    with plan_for("Ascend910B3"):
        with record_launches(execute=False) as planned:
            variant.call()
        with record_launches() as launched:
            variant.call()
    assert planned, "the variant launched nothing"
    shimmed = torch.bfloat16 in variant.dtypes
    assert [_comparable(s, shimmed) for s in planned] == [_comparable(s) for s in launched]


def test_cached_launch_plans_equal_fresh_ones():
    """The per-shape plan caches (runtime.configs.ShapeCache) give the very launches a fresh
    planning gives: every op at two batch sizes, planned cold, then from the caches, then with the
    caches bypassed (record_lookups)."""
    from vllm_ascend_triton.runtime import configs
    from vllm_ascend_triton.workloads.ops import workloads
    from vllm_ascend_triton.workloads.shapes import load_shapes

    shapes = load_shapes()
    items = []
    for tokens in (3, 64):
        one = dataclasses.replace(shapes, tokens={**shapes.tokens, "t": [tokens]})
        items += workloads(one, "t", one_model_per_op=True, context="quick_context", max_experts=8)
    configs.clear_caches()
    for w in items:
        prepared = w.prepare("cpu", fill=False)
        runs = []
        for fresh in (False, False, True):
            with record_launches(execute=False) as specs:
                if fresh:
                    with configs.record_lookups():
                        prepared.run()
                else:
                    prepared.run()
            runs.append([_comparable(s) for s in specs])
        assert runs[0] and runs[0] == runs[1] == runs[2], w.label
    assert len(items) >= 14 and sum(len(c) for c in configs._shape_caches) >= len(items)
