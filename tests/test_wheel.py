"""The wheel users install holds everything the package reads at run time.

Built from a copy of the sources (a stale `build/` folder cannot leak files in), installed into a
folder of its own, and run from outside the source tree: an editable install would hide a missing
data file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{args}: rc {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "vllm_ascend_triton",
        src / "vllm_ascend_triton",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VAT_BACKEND", "TRITON_INTERPRET")}
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)],
        cwd=tmp,
        env=env,
    )
    (wheel,) = (tmp / "dist").glob("vllm_ascend_triton-*.whl")
    site = tmp / "site"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(wheel),
        ],
        cwd=tmp,
        env=env,
    )
    # The wheel's copy comes first on the path, before the editable install of the dev venv.
    return site, {**env, "PYTHONPATH": str(site)}


def test_wheel_is_the_package_imported(installed_wheel):
    site, env = installed_wheel
    code = (
        "import json, importlib.metadata as md, vllm_ascend_triton\n"
        "dist = md.distribution('vllm-ascend-triton')\n"
        "eps = {g: [(e.name, e.value, e.load().__module__) for e in dist.entry_points if e.group == g]\n"
        "       for g in ('vllm.general_plugins', 'vllm.platform_plugins')}\n"
        "print(json.dumps({'file': vllm_ascend_triton.__file__, 'dist': str(dist.locate_file('')),\n"
        "                  'eps': eps}))\n"
    )
    out = json.loads(_run([sys.executable, "-c", code], cwd=site.parent, env=env).stdout)
    assert out["file"].startswith(str(site)), out
    assert out["dist"].startswith(str(site)), out
    assert out["eps"]["vllm.general_plugins"] and out["eps"]["vllm.platform_plugins"], out
    for group in out["eps"].values():
        for _name, _value, module in group:
            assert module.startswith("vllm_ascend_triton.plugin"), out


def test_wheel_vat_info_and_quick_bench(installed_wheel):
    site, env = installed_wheel
    vat = str(site / "bin" / "vat")
    info = json.loads(_run([sys.executable, vat, "info", "--json"], cwd=site.parent, env=env).stdout)
    assert info, info
    out = site.parent / "bench"
    bench = _run(
        [
            sys.executable,
            vat,
            "bench",
            "--quick",
            "--kernels",
            "rope",
            "--sku",
            "Ascend910B3",
            "--out",
            str(out),
            "--json",
        ],
        cwd=site.parent,
        env=env,
    )
    report = json.loads(bench.stdout)
    assert report["meta"]["shapes_file"].startswith(str(site)), report["meta"]
    assert report["rows"], report
    assert (out / "bench.json").is_file() and (out / "bench.csv").is_file()
