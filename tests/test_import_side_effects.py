"""A plugin is imported into every vLLM process: importing ours must change nothing there."""

import json
import os
import subprocess
import sys

import pytest

_PROBE = r"""
import importlib.metadata, json, os, sys
from triton.runtime import interpreter
before = {name: getattr(interpreter.ReduceOps, name) for name in ("sum", "apply_impl")}
before["cumsum"] = interpreter.ScanOps.cumsum
import vllm_ascend_triton, vllm_ascend_triton.scheduler, vllm_ascend_triton.kernels
from vllm_ascend_triton.runtime import launch  # what every kernel module imports first
for group in ("vllm.general_plugins", "vllm.platform_plugins"):
    for ep in importlib.metadata.entry_points(group=group):
        if ep.value.startswith("vllm_ascend_triton"):
            ep.load()
after = {name: getattr(interpreter.ReduceOps, name) for name in ("sum", "apply_impl")}
after["cumsum"] = interpreter.ScanOps.cumsum
print(json.dumps({
    "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    "patched": sorted(k for k in before if before[k] is not after[k]),
}))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VAT_BACKEND")}


def test_import_leaves_triton_and_environment_untouched():
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {"TRITON_INTERPRET": None, "patched": []}


def test_launch_without_a_backend_fails_naming_vat_backend():
    code = (
        "import torch\n"
        "from vllm_ascend_triton.kernels import rotary_embedding\n"
        "q = torch.zeros(2, 8); k = torch.zeros(2, 8); cache = torch.zeros(4, 8)\n"
        "rotary_embedding(torch.zeros(2, dtype=torch.long), q, k, 8, cache, True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "BackendNotSelectedError" in proc.stderr and "VAT_BACKEND=interpreter" in proc.stderr


@pytest.mark.parametrize("how", ["env", "call"])
def test_interpreter_chosen_explicitly_runs_kernels(how):
    env = _clean_env()
    code = "import torch\n"
    if how == "env":
        env["VAT_BACKEND"] = "interpreter"
    else:
        code += "from vllm_ascend_triton.runtime.backend import select_backend\n"
        code += "select_backend('interpreter')\n"
    code += (
        "from vllm_ascend_triton.kernels import rotary_embedding\n"
        "q = torch.ones(2, 8); k = torch.ones(2, 8); cache = torch.zeros(4, 8)\n"
        "rotary_embedding(torch.zeros(2, dtype=torch.long), q, k, 8, cache, True)\n"
        "import os; print(os.environ['TRITON_INTERPRET'], float(q.sum()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # cos = 0, sin = 0: every rotated dim becomes 0.
    assert proc.stdout.split()[-2:] == ["1", "0.0"]


def test_interpreter_selected_after_compiled_kernels_is_refused():
    code = (
        "import vllm_ascend_triton.kernels.rope\n"
        "from vllm_ascend_triton.runtime.backend import select_backend\n"
        "select_backend('interpreter')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "before importing vllm_ascend_triton.kernels" in proc.stderr
