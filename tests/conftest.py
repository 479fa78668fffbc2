"""Shared test setup. The suite runs kernels in Triton's interpreter: the backend is selected
here, explicitly, before any test module defines or imports a kernel (importing the package
itself chooses nothing)."""

import os

import pytest
import torch

from vllm_ascend_triton.runtime.backend import select_backend

BACKEND = select_backend(os.environ.get("VAT_BACKEND") or "interpreter")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_report_header(config: pytest.Config) -> str:
    interpret = os.environ.get("TRITON_INTERPRET")
    return f"vllm_ascend_triton backend: {BACKEND.value}, TRITON_INTERPRET={interpret}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with the most slow (end-to-end) tests first, each keeping its order: `make test`
    hands whole modules to its two workers in this order, so the long ones start early instead of
    last."""
    slow: dict = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])
