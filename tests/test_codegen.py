import pytest
from kernel_samples import fp64_dot_kernel, scaled_add_kernel

from vllm_ascend_triton.codegen.lower import LoweringRequest, kernel_ref, lower, lower_many
from vllm_ascend_triton.codegen.report import parse_adapter_ir

SCALED_ADD_SIG = {"x_ptr": "*fp16", "y_ptr": "*fp16", "out_ptr": "*fp16", "n": "i32", "alpha": "fp32"}


def test_kernel_ref_names_the_module():
    assert kernel_ref(scaled_add_kernel) == "kernel_samples:scaled_add_kernel"


@pytest.mark.slow
def test_lowering_a_small_kernel_for_910b3():
    result = lower(scaled_add_kernel, SCALED_ADD_SIG, {"BLOCK": 256}, "Ascend910B3")
    assert result.ok and result.stage == "adapter", result.error  # no CANN here: stops before bishengir
    assert "tt.func" in result.ttir
    report = parse_adapter_ir(result.ttadapter)
    assert report.mix_mode == "aiv" and not report.uses_cube
    assert report.ub_bytes > 0 and report.fits_ub(196608)
    assert report.discrete_accesses == 0


@pytest.mark.slow
def test_lowering_reports_a_rejected_kernel_and_keeps_going():
    rejected, accepted = lower_many(
        [
            LoweringRequest(
                "kernel_samples:fp64_dot_kernel", {"x_ptr": "*fp64", "out_ptr": "*fp64"}, {"B": 16}
            ),
            LoweringRequest(kernel_ref(scaled_add_kernel), SCALED_ADD_SIG, {"BLOCK": 128}, "Ascend910_9392"),
        ]
    )
    assert not rejected.ok and rejected.stage == "failed"
    assert "fp64" in rejected.error and rejected.ttadapter is None
    assert accepted.ok


def test_lowering_refuses_unsupported_sku():
    with pytest.raises(ValueError, match="Ascend310P3"):
        lower(fp64_dot_kernel, {"x_ptr": "*fp16", "out_ptr": "*fp16"}, {"B": 16}, "Ascend310P3")


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


def test_triton_type_names():
    import torch

    from vllm_ascend_triton.codegen.lower import triton_type_name

    assert [triton_type_name(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.int32)] == [
        "fp16",
        "bf16",
        "fp32",
        "i32",
    ]
    with pytest.raises(ValueError, match="float64"):
        triton_type_name(torch.float64)
