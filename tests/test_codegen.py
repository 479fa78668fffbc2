import json

import pytest
import torch
from kernel_samples import fp64_dot_kernel, scaled_add_kernel

from vllm_ascend_triton.codegen.cache import ArtifactCache
from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many, lower_spec
from vllm_ascend_triton.codegen.report import parse_adapter_ir
from vllm_ascend_triton.runtime.launch import LaunchSpec, kernel_ref


def _scaled_add_spec(dtype=torch.float16, block=256) -> LaunchSpec:
    x = torch.zeros(8, dtype=dtype)
    return LaunchSpec(
        "scaled_add",
        scaled_add_kernel,
        (1,),
        args={"x_ptr": x, "y_ptr": x, "out_ptr": x, "n": 8, "alpha": 0.5},
        constexprs={"BLOCK": block},
    )


def test_kernel_ref_names_the_module():
    assert kernel_ref(scaled_add_kernel) == "kernel_samples:scaled_add_kernel"


def test_signature_is_derived_by_triton():
    sig = _scaled_add_spec().signature()
    assert sig == {"x_ptr": "*fp16", "y_ptr": "*fp16", "out_ptr": "*fp16", "n": "i32", "alpha": "fp32"}
    assert _scaled_add_spec(torch.bfloat16).signature()["x_ptr"] == "*bf16"


def test_spec_refuses_missing_or_unknown_arguments():
    x = torch.zeros(8)
    with pytest.raises(ValueError, match="runtime arguments"):
        LaunchSpec("s", scaled_add_kernel, (1,), args={"x_ptr": x}, constexprs={"BLOCK": 8})
    with pytest.raises(ValueError, match="constexprs"):
        LaunchSpec(
            "s",
            scaled_add_kernel,
            (1,),
            args={"x_ptr": x, "y_ptr": x, "out_ptr": x, "n": 8, "alpha": 0.5},
            constexprs={"BLOCK": 8, "EXTRA": 1},
        )
    with pytest.raises(ValueError, match="65535"):
        LaunchSpec(
            "s",
            scaled_add_kernel,
            (70000,),
            args={"x_ptr": x, "y_ptr": x, "out_ptr": x, "n": 8, "alpha": 0.5},
            constexprs={"BLOCK": 8},
        )


@pytest.mark.slow
def test_lowering_a_small_kernel_for_910b3():
    result = lower_spec(_scaled_add_spec(), "Ascend910B3")
    assert result.ok and result.stage == "adapter", result.error  # no CANN here: stops before bishengir
    assert "tt.func" in result.ttir
    report = parse_adapter_ir(result.ttadapter)
    assert report.mix_mode == "aiv" and not report.uses_cube
    assert report.ub_bytes > 0 and report.fits_ub(196608)
    assert report.discrete_accesses == 0


@pytest.mark.slow
def test_lowering_reports_a_rejected_kernel_and_keeps_going(tmp_path):
    x64 = torch.zeros(16, dtype=torch.float64)
    rejected_spec = LaunchSpec("fp64_dot", fp64_dot_kernel, (1,), {"x_ptr": x64, "out_ptr": x64}, {"B": 16})
    requests = [
        LoweringRequest.from_spec(rejected_spec, "Ascend910B3"),
        LoweringRequest.from_spec(_scaled_add_spec(block=128), "Ascend910_9392"),
    ]
    cache = ArtifactCache(tmp_path)
    rejected, accepted = lower_many(requests, jobs=2, cache=cache)
    assert not rejected.ok and rejected.stage == "failed"
    assert "fp64" in rejected.error and rejected.ttadapter is None
    assert accepted.ok and not accepted.cached
    # A second run takes both from the content-addressed cache, failure included.
    again = lower_many(requests, cache=cache)
    assert [r.cached for r in again] == [True, True]
    assert [r.stage for r in again] == ["failed", "adapter"] and again[1].ttadapter == accepted.ttadapter
    meta = json.loads((cache.path(requests[1]) / "meta.json").read_text())
    assert meta["sku"] == "Ascend910_9392" and meta["signature"]["x_ptr"] == "*fp16"


def test_cache_key_changes_with_what_changes_the_binary():
    base = LoweringRequest.from_spec(_scaled_add_spec(), "Ascend910B3")
    assert base.cache_key() == LoweringRequest.from_spec(_scaled_add_spec(), "Ascend910B3").cache_key()
    others = [
        LoweringRequest.from_spec(_scaled_add_spec(block=128), "Ascend910B3"),
        LoweringRequest.from_spec(_scaled_add_spec(torch.float32), "Ascend910B3"),
        LoweringRequest.from_spec(_scaled_add_spec(), "Ascend910_9392"),
    ]
    assert len({base.cache_key(), *(o.cache_key() for o in others)}) == 4


def test_lowering_refuses_unsupported_sku():
    with pytest.raises(ValueError, match="Ascend310P3"):
        lower_many([LoweringRequest("kernel_samples:scaled_add_kernel", {}, {}, "Ascend310P3")])


def test_parse_adapter_ir():
    ir = """
    func.func @k(...) attributes {mix_mode = "mix", parallel_mode = "simd"} {
      %alloc = memref.alloc() : memref<64x128xf16>
      %alloc_1 = memref.alloc() {alignment = 64 : i64} : memref<64xf32>
      scf.for %i = %c0 to %c8 step %c1 { ... } {DiscreteMemAccess}
    """
    report = parse_adapter_ir(ir)
    assert report.mix_mode == "mix" and report.uses_cube
    assert report.buffers == (("64x128xf16", 64 * 128 * 2), ("64xf32", 256))
    assert report.ub_bytes == 64 * 128 * 2 + 256
    assert report.discrete_accesses == 1
    assert report.fits_ub(2 * report.ub_bytes) and not report.fits_ub(2 * report.ub_bytes - 1)


@pytest.mark.slow
def test_identical_requests_in_one_batch_are_lowered_once(tmp_path):
    req = LoweringRequest.from_spec(_scaled_add_spec(), "Ascend910B3")
    results = lower_many([req, req, req], jobs=2, cache=ArtifactCache(tmp_path))
    assert [r.ok for r in results] == [True, True, True]
    assert len({r.ttadapter for r in results}) == 1
    assert len(list((tmp_path / "lowered").glob("*/*"))) == 1


def test_cache_keeps_an_npu_binary(tmp_path):
    # No CANN here to build one: the storage path is checked with bytes standing in for it.
    from vllm_ascend_triton.codegen.lower import LoweringResult

    req = LoweringRequest.from_spec(_scaled_add_spec(), "Ascend910B3")
    cache = ArtifactCache(tmp_path)
    cache.put(LoweringResult(req, "binary", "ttir", "adapter", None, npubin=b"\x7fELF-bytes"))
    hit = cache.get(req)
    assert hit.cached and hit.stage == "binary" and hit.npubin == b"\x7fELF-bytes"
