"""What `vat compile` lowers is what the host APIs launch: for every variant, the specs recorded in
a dry run (codegen's source) equal the specs the same call launches when it runs."""

from __future__ import annotations

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
