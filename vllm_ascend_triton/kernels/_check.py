"""Correctness checks of a kernel against its torch reference, shared by `vat check` and bench.

Each kernel family's `checks` module provides `self_check() -> list[CheckResult]`: a few small cases run
on this process's backend (the interpreter on a CPU) and compared with the family's reference.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class CheckResult:
    kernel: str
    case: str
    max_abs_err: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.atol

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok}


def compare(kernel: str, case: str, actual: torch.Tensor, expected: torch.Tensor, atol: float) -> CheckResult:
    """Max |actual - expected| (inf on a shape mismatch or a NaN where the reference has none)."""
    if actual.shape != expected.shape:
        return CheckResult(
            kernel, f"{case} (shape {tuple(actual.shape)} != {tuple(expected.shape)})", float("inf"), atol
        )
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.equal(torch.isnan(a), torch.isnan(e)):
        return CheckResult(kernel, f"{case} (NaN mismatch)", float("inf"), atol)
    both = ~torch.isnan(e)
    err = (a[both] - e[both]).abs().max().item() if both.any() else 0.0
    return CheckResult(kernel, case, err, atol)


def run_all_checks(families: tuple[str, ...] | None = None) -> list[CheckResult]:
    import importlib

    from vllm_ascend_triton.kernels import FAMILIES

    results: list[CheckResult] = []
    for family in families or FAMILIES:
        results.extend(importlib.import_module(f"vllm_ascend_triton.kernels.{family}.checks").self_check())
    return results
