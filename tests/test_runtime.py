import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from kernel_samples import double_kernel, int_sums_kernel, row_max_kernel, scaled_add_kernel

from vllm_ascend_triton.cli import main as vat_main
from vllm_ascend_triton.runtime import device as device_mod
from vllm_ascend_triton.runtime.backend import Backend, current_backend, decide_backend
from vllm_ascend_triton.runtime.launch import bf16_shim, checks_enabled, persistent_grid
from vllm_ascend_triton.runtime.sku import SKUS, UnknownSKUError, get_sku, supported_skus


def test_sku_table_figures():
    b3 = get_sku("Ascend910B3")
    assert (b3.cube_cores, b3.vector_cores, b3.ub_bytes) == (20, 40, 196608)
    assert get_sku("ascend910b1").cube_cores == 24  # case-insensitive
    for sku in SKUS.values():
        if sku.family in ("Atlas A2", "Atlas A3"):
            assert sku.triton_supported
            assert sku.vector_cores == 2 * sku.cube_cores  # A2/A3: two AIV per AIC
            assert sku.ub_bytes == 192 * 1024


def test_a_larger_unified_buffer_changes_the_tiles():
    from vllm_ascend_triton.runtime.device import plan_for
    from vllm_ascend_triton.runtime.ub import tile_elements

    with plan_for("Ascend910B3"):
        a2 = tile_elements(live_tiles=5, elem_bytes=2)
    with plan_for("Ascend950PR") as dev:
        assert dev.ub_bytes == 253952 and not dev.sku.triton_supported
        a5 = tile_elements(live_tiles=5, elem_bytes=2)
    assert (a2, a5) == (4096, 8192)


def test_unknown_sku_lists_known_ones():
    with pytest.raises(UnknownSKUError) as err:
        get_sku("Ascend999")
    assert "Ascend999" in str(err.value)
    for name in SKUS:
        assert name in str(err.value)


def test_310p_known_but_unsupported():
    sku = get_sku("Ascend310P3")
    assert not sku.triton_supported
    assert "triton-ascend" in sku.unsupported_reason
    assert "Ascend310P3" not in supported_skus()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"VAT_BACKEND": "npu"}, Backend.NPU),
        ({"VAT_BACKEND": "Interpreter"}, Backend.INTERPRETER),
        ({"VAT_BACKEND": "cuda"}, Backend.CUDA),
        ({"TRITON_INTERPRET": "1"}, Backend.INTERPRETER),
        ({}, None),  # no torch_npu / no /dev/davinci* on this machine: nothing is chosen
    ],
)
def test_decide_backend(env, expected):
    assert decide_backend(env) is expected


def test_bad_backend_name():
    with pytest.raises(ValueError, match="VAT_BACKEND"):
        decide_backend({"VAT_BACKEND": "gpu"})


def test_this_process_uses_the_interpreter():
    assert current_backend() is Backend.INTERPRETER
    assert checks_enabled()


def test_sku_override_and_default(monkeypatch):
    monkeypatch.delenv("VAT_SKU", raising=False)
    default = device_mod.current_device()
    assert default.source == "default" and not default.npu_present
    monkeypatch.setenv("VAT_SKU", "ascend910_9392")
    dev = device_mod.current_device()
    assert (dev.source, dev.sku.name, dev.cube_cores, dev.vector_cores) == ("env", "Ascend910_9392", 24, 48)
    monkeypatch.setenv("VAT_SKU", "Ascend910X")
    with pytest.raises(UnknownSKUError):
        device_mod.current_device()


def test_persistent_grid(monkeypatch):
    monkeypatch.setenv("VAT_SKU", "Ascend910B3")
    assert persistent_grid(1000) == (40,)
    assert persistent_grid(1000, uses_cube=True) == (20,)
    assert persistent_grid(3) == (3,)
    assert persistent_grid(0) == (1,)
    with pytest.raises(ValueError):
        persistent_grid(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 300])
def test_interpreter_launch_matches_torch(dtype, n):
    x = torch.randn(n, dtype=dtype)
    y = torch.randn(n, dtype=dtype)
    out = torch.full((n,), float("nan"), dtype=dtype)
    block = 64
    with bf16_shim() as shim:
        xs, ys, outs = shim.input(x), shim.input(y), shim.output(out)
        scaled_add_kernel[persistent_grid(triton_cdiv(n, block))](xs, ys, outs, n, 0.5, BLOCK=block)
    expected = (x.float() * 0.5 + y.float()).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0 if dtype != torch.float16 else 1e-3)


def test_bf16_shim_fixes_interpreter_bf16():
    # Why the shim exists: the interpreter mis-computes bf16 arithmetic (1.5 + 1.5 -> inf).
    x = torch.full((40,), 1.5, dtype=torch.bfloat16)
    expected = torch.full((40,), 3.0, dtype=torch.bfloat16)
    raw = torch.zeros_like(x)
    double_kernel[(1,)](x, raw, 40, BLOCK=64)
    assert not torch.equal(raw, expected)
    out = torch.zeros_like(x)
    with bf16_shim() as shim:
        double_kernel[(1,)](shim.input(x), shim.output(out), 40, BLOCK=64)
    assert torch.equal(out, expected)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def test_vat_info_json_for_910b3(monkeypatch, capsys):
    monkeypatch.setenv("VAT_SKU", "Ascend910B3")
    assert vat_main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["npu"] is None and info["backend"] == "interpreter"
    assert info["device"]["cube_cores"] == 20
    assert info["device"]["vector_cores"] == 40
    assert info["device"]["ub_bytes"] == 196608
    assert info["versions"]["triton_ascend"] == "3.2.0"
    assert info["versions"]["upstream_triton"] is None


def test_vat_info_text(monkeypatch, capsys):
    monkeypatch.setenv("VAT_SKU", "Ascend310P3")
    assert vat_main(["info"]) == 0
    out = capsys.readouterr().out
    assert "no NPU" in out and "NOT supported" in out


def test_forced_npu_backend_without_npu_fails_clearly():
    # A fresh process: VAT_BACKEND is applied when a kernel module is first imported.
    code = (
        "import torch\n"
        "from vllm_ascend_triton.runtime.checks import check_tensor\n"
        "check_tensor('query', torch.zeros(2))\n"
    )
    env = {**os.environ, "VAT_BACKEND": "npu"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "needs torch_npu and a visible Ascend NPU" in proc.stderr


def test_interpreter_int32_reductions_keep_their_dtype():
    # Unfixed, numpy widens int32 sums to int64 and the stores write past the outputs.
    x = torch.arange(1, 17, dtype=torch.int32)
    guard = -7
    sums = torch.full((1 + 4,), guard, dtype=torch.int32)
    cumsums = torch.full((16 + 4,), guard, dtype=torch.int32)
    maxes = torch.full((1 + 4,), guard, dtype=torch.int32)
    int_sums_kernel[(1,)](x, sums, cumsums, maxes, B=16)
    assert sums[0] == 136 and maxes[0] == 16
    assert torch.equal(cumsums[:16], torch.cumsum(x, 0).to(torch.int32))
    for buf in (sums[1:], cumsums[16:], maxes[1:]):
        assert torch.all(buf == guard), "a store wrote past its output"


def test_interpreter_fast_max_min_matches_torch():
    x = torch.randn(128, 256)
    x[3, 5] = float("nan")  # the interpreter's tl.maximum is np.maximum: NaN propagates
    out = torch.empty(256)
    started = time.perf_counter()
    row_max_kernel[(1,)](x, out, R=128, C=256)
    # Element by element this tile took ~3 s (measured); the numpy reduction ~0.02 s.
    assert time.perf_counter() - started < 1.0
    torch.testing.assert_close(out[:128], x.amax(dim=1), equal_nan=True)
    torch.testing.assert_close(out[128:], x.amin(dim=1), equal_nan=True)


def test_launch_spec_validates_once_per_launch_with_cached_kernel_facts():
    from vllm_ascend_triton.runtime.launch import LaunchSpec, kernel_facts

    facts = kernel_facts(double_kernel)
    assert kernel_facts(double_kernel) is facts  # computed once per kernel
    assert facts.runtime == {"x_ptr", "out_ptr", "n"} and facts.constexprs == {"BLOCK"}
    x = torch.zeros(4)
    args = {"x_ptr": x, "out_ptr": x, "n": 4}

    def spec(**kw):
        base = dict(name="t", kernel=double_kernel, grid=(1,), args=args, constexprs={"BLOCK": 8})
        return LaunchSpec(**{**base, **kw})

    assert spec(config={"BLOCK": 8, "multibuffer": False}).options == {"multibuffer": False}
    assert spec(config={"multibuffer": False}, options={"multibuffer": True}).options == {"multibuffer": True}
    for grid in ((), (0,), (2, 0), (1.0,), (65536,)):
        with pytest.raises(ValueError, match="grid"):
            spec(grid=grid)
    with pytest.raises(ValueError, match="unknown compile options"):
        spec(options={"num_warps": 4})
    with pytest.raises(ValueError, match="constexprs"):
        spec(constexprs={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec().grid = (2,)
