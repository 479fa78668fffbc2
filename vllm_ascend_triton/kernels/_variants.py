"""Variants: the representative calls whose launch specs `vat compile` lowers and `vat tune` ranks.

A family's `variants.py` lists `Variant`s: a label and a function that calls the family's public
host API with small inputs of a representative shape (real models' head sizes, head counts,
experts, dtypes; few tokens, since token counts change no constexpr). `collect_specs` runs them
as a dry run (`record_launches(execute=False)`): the host APIs validate, choose their configs for
the SKU being planned and build their `LaunchSpec`s, which are recorded instead of launched. So
the variants are by construction what the runtime launches for those shapes.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable

import torch

from vllm_ascend_triton.runtime.backend import device_type
from vllm_ascend_triton.runtime.launch import LaunchSpec, record_launches


@dataclasses.dataclass(frozen=True)
class Variant:
    family: str
    label: str  # e.g. "llama3_8b_fp16"
    call: Callable[[], object]  # calls the public host API with representative inputs
    dtypes: tuple[torch.dtype, ...] = ()  # data dtypes involved (bf16 variants are dry-run only here)


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    variant: Variant
    spec: LaunchSpec

    @property
    def label(self) -> str:
        return f"{self.spec.name}[{self.variant.label}]"


def device() -> str:
    """Where variant inputs live: the backend's device type."""
    return device_type()


def collect_specs(variants: Iterable[Variant]) -> list[VariantSpec]:
    out = []
    for variant in variants:
        with record_launches(execute=False) as specs:
            variant.call()
        if not specs:
            raise RuntimeError(f"variant {variant.family}/{variant.label} launched nothing")
        out.extend(VariantSpec(variant, spec) for spec in specs)
    return out


def family_variants(family: str) -> list[Variant]:
    return list(importlib.import_module(f"vllm_ascend_triton.kernels.{family}.variants").VARIANTS)
