"""Shared test setup. Importing the package first chooses the backend (the interpreter here)
before any test module defines or imports a kernel."""

import os

import pytest
import torch

import vllm_ascend_triton  # noqa: F401  (must precede every kernel import)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_report_header(config: pytest.Config) -> str:
    interpret = os.environ.get("TRITON_INTERPRET")
    return f"vllm_ascend_triton backend: {vllm_ascend_triton.BACKEND.value}, TRITON_INTERPRET={interpret}"
