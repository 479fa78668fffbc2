"""The architecture's import contracts (pyproject `[tool.importlinter]`) hold, and they can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [str(LINT), "--no-logo", "--no-cache", str(cwd / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept():
    result = _lint(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].split(",")[0]


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The runtime importing the CLI (an arrow against the order) fails the check."""
    shutil.copytree(
        ROOT / "vllm_ascend_triton",
        tmp_path / "vllm_ascend_triton",
        ignore=shutil.ignore_patterns("__pycache__", "tuned_configs"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    sku = tmp_path / "vllm_ascend_triton" / "runtime" / "sku.py"
    sku.write_text(sku.read_text() + "\nfrom vllm_ascend_triton.cli import main as _upward  # noqa\n")
    result = _lint(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "vllm_ascend_triton.runtime.sku" in result.stdout and "vllm_ascend_triton.cli" in result.stdout
