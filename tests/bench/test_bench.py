"""`vat bench`: rows with labelled figures, strict JSON/CSV/PNG outputs, the shapes file, and the
GPU script's promise (only torch, triton and numpy needed; no rich/matplotlib/vLLM)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_ascend_triton.bench import output, runner
from vllm_ascend_triton.cli import main
from vllm_ascend_triton.workloads.ops import OPS, workloads
from vllm_ascend_triton.workloads.shapes import load_shapes

REPO = Path(__file__).resolve().parents[2]


def _strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_shapes_file_covers_the_models_and_ops():
    shapes = load_shapes()
    labels = {m.label for m in shapes.models}
    assert {"Llama-3-8B", "Qwen3-30B-A3B", "DeepSeek-V3", "Qwen2.5-VL-7B", "GLM-4.5"} <= labels
    ops = {w.op for w in workloads(shapes, "bench")}
    assert ops == set(OPS)
    # DeepSeek-V3's routing is grouped (8 groups, top-4 groups); its MLA cache is not benched as GQA
    # but by the MLA ops (latent cache write, decode, prefill).
    ds = [w for w in workloads(shapes, "quick") if w.model.name == "deepseek_v3"]
    assert {w.op for w in ds} == {
        "rope", "grouped_topk", "moe_align_block_size", "fused_experts",
        "concat_and_cache_mla", "mla_decode", "mla_prefill",
    }  # fmt: skip


def test_bad_shapes_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text("[models\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_shapes(bad)
    bad.write_text("[tokens]\nquick = [0]\n[models.x]\nnum_heads = 1\n")
    with pytest.raises(ValueError, match="positive ints"):
        load_shapes(bad).token_counts("quick")
    with pytest.raises(ValueError, match="cannot read"):
        load_shapes(tmp_path / "missing.toml")


def test_quick_rope_rows_and_outputs(tmp_path):
    result = runner.run_bench("Ascend910B3", kernels=["rope"], quick=True)
    (row,) = result["rows"]
    assert row["kernel"] == "rope" and row["model"] == "Llama-3-8B" and row["tokens"] == 4
    assert row["ok"] and row["max_abs_err"] <= row["atol"]
    assert (
        row["stage"] in ("adapter", "binary")
        and row["fits_ub"]
        and 0 < row["ub_bytes"] <= row["sku_ub_bytes"]
    )
    assert row["modelled_us"] > 0 and 0 < row["modelled_roofline_share"] <= 1
    assert row["host_us"] > 0
    # The interpreter is no compiled backend: nothing is claimed as a measured kernel time.
    assert all(row[c] is None for c in ("measured_us", "measured_gbps", "launch_us", "torch_us"))
    labels = result["meta"]["labels"]
    assert labels["modelled_us"].startswith("modelled") and "not measured" in labels["modelled_us"]
    assert labels["max_abs_err"].startswith("measured") and "CPU" in labels["max_abs_err"]
    assert "measured_us" not in labels
    paths = output.write_all(result, tmp_path)
    assert {p.name for p in paths} == {"bench.csv", "bench.json", "bench.md", "bench.png"}
    doc = _strict((tmp_path / "bench.json").read_text())
    assert doc["rows"][0]["kernel"] == "rope" and doc["meta"]["sku"] == "Ascend910B3"
    (csv_row,) = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert csv_row["measured_us"] == "" and float(csv_row["modelled_us"]) == pytest.approx(row["modelled_us"])
    md = (tmp_path / "bench.md").read_text()
    assert "time us (modelled)" in md and "time us (measured)" not in md


def test_failed_rows_and_budget(tmp_path):
    result = runner.run_bench("Ascend910B3", kernels=["rope"], quick=True, lower=False, deadline_s=0.0)
    (row,) = result["rows"]
    assert row["error"].startswith("skipped") and runner.failed_rows(result) == []
    fake = {"rows": [{"ok": False}, {"ok": True, "fits_ub": False}, {"ok": True, "stage": "adapter"}]}
    assert len(runner.failed_rows(fake)) == 2


def test_cli_bench_json_and_bad_kernel(tmp_path, capsys):
    rc = main(["bench", "--quick", "--kernels", "rope", "--no-lower", "--json", "--out", str(tmp_path)])
    doc = _strict(capsys.readouterr().out)
    assert rc == 0 and doc["rows"][0]["stage"] is None and (tmp_path / "bench.csv").is_file()
    assert main(["bench", "--kernels", "no_such_kernel", "--out", str(tmp_path)]) == 2


_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("rich", "matplotlib", "vllm", "torch_npu", "hypothesis", "pytest"):
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_bench.py"] + sys.argv[1:]
import runpy, atexit, json, os
def dump():
    ours = sorted(m for m in sys.modules if m.startswith("vllm_ascend_triton"))
    with open(os.environ["MODULES_OUT"], "w") as f:
        json.dump(ours, f)
atexit.register(dump)
runpy.run_path("scripts/gpu_bench.py", run_name="__main__")
"""


def test_gpu_script_needs_only_torch_triton_numpy(tmp_path):
    """The GPU script's import closure: runs (here on the interpreter) with rich, matplotlib and
    vLLM unimportable, and loads no CLI, plugin, scheduler or lowering-worker module."""
    env = {k: v for k, v in os.environ.items() if k not in ("VAT_BACKEND", "TRITON_INTERPRET")}
    env.update(PYTHONPATH=str(REPO), MODULES_OUT=str(tmp_path / "modules.json"))
    args = ["--backend", "interpreter", "--quick", "--kernels", "rope", "--out", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKER, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| rope |" in proc.stdout and "measured on" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "bench.csv",
        "bench.json",
        "bench.md",
    ]  # no PNG
    modules = json.loads((tmp_path / "modules.json").read_text())
    forbidden = ("vllm_ascend_triton.cli", "vllm_ascend_triton.plugin", "vllm_ascend_triton.scheduler",
                 "vllm_ascend_triton.codegen")  # fmt: skip
    assert not [m for m in modules if m.startswith(forbidden)]


# The torch baseline of rope is vLLM's forward_static here; importing vLLM warns about its own
# dependencies (a CPU host without the NPU compiler, torch.jit deprecations).
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_compiled_backend_columns_plumbing(monkeypatch):
    """The measured columns' arithmetic and labels, with the timer faked (no GPU or NPU here): on a
    compiled backend every timed figure is derived from do_bench and labelled with the device."""
    from vllm_ascend_triton.runtime.backend import Backend

    monkeypatch.setattr(runner, "current_backend", lambda: Backend.CUDA)
    monkeypatch.setattr(runner, "where_measured", lambda: "a fake GPU")
    monkeypatch.setattr(runner, "device_hbm_gbps", lambda: 1000.0)
    timed = []
    monkeypatch.setattr(runner, "_do_bench_us", lambda fn: (fn(), timed.append(fn), 10.0)[-1])
    monkeypatch.setattr(runner, "_launch_us", lambda run: 3.0)
    result = runner.run_bench("Ascend910B3", kernels=["rope"], quick=True, lower=False)
    (row,) = result["rows"]
    assert len(timed) == 2  # ours and the torch implementation
    assert row["measured_us"] == 10.0 and row["launch_us"] == 3.0 and row["torch_us"] == 10.0
    hbm = 4 * ((32 + 8) * 128 * 2 * 2 + 128 * 2 + 8)  # Llama-3-8B rope, 4 tokens, fp16
    assert row["measured_gbps"] == pytest.approx(hbm / 10e-6 / 1e9)
    assert row["measured_hbm_share"] == pytest.approx(row["measured_gbps"] / 1000.0)
    assert row["speedup_vs_torch"] == 1.0
    labels = result["meta"]["labels"]
    assert all("a fake GPU" in labels[c] for c in ("measured_us", "measured_gbps", "launch_us", "torch_us"))
