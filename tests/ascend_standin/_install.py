"""Install the stand-in ``vllm_ascend`` (``pkg/``) into a folder of its own and build the
environment of a process that should see it: ``PYTHONPATH`` holds that folder, so
``importlib.metadata`` finds its entry points there, and nowhere else in the test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).with_name("pkg")
REPO = Path(__file__).resolve().parents[2]
# Variables that would leak a backend, platform or hook choice from the test process.
_SCRUB = (
    "TRITON_INTERPRET", "VAT_BACKEND", "VAT_PLATFORM", "VAT_ASCEND", "VAT_PLUGIN_MUTATE",
    "VAT_PLUGIN_COUNTS_DIR", "VLLM_PLUGINS", "VLLM_ENABLE_V1_MULTIPROCESSING",
)  # fmt: skip
# Only the stand-in's plugins: vLLM as it runs without our package.
STANDIN_ONLY = "ascend,ascend_model"


def install_standin(tmp: Path) -> Path:
    """``pip install --no-deps --target`` of a copy of ``pkg/`` (the source tree stays clean)."""
    src = tmp / "standin-src"
    target = tmp / "standin-site"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return target


def standin_env(target: Path, **extra: str) -> dict[str, str]:
    """The environment of a vLLM process beside the stand-in (``extra`` added last)."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env
