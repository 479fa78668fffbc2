"""The W8A8 MoE kernels under hostile input with data checks off (VAT_CHECK_INPUTS=0), as on an NPU:
the contract of `fused_experts` (out-of-range ids and map entries dropped, NaN/inf kept in their
tokens), proved with the canary harness of test_moe_hostile (every storage inside poisoned margins,
two poison patterns, inputs unchanged, outputs equal to the reference; each case in a forked child)."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from test_moe_hostile import E, _hostile_ids, _map, guarded_run, run_isolated

from vllm_ascend_triton.kernels import dynamic_per_token_quant, fused_experts_w8a8
from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import (
    dynamic_per_token_quant_ref,
    fused_experts_w8a8_ref,
    quantize_weight_per_channel,
)
from vllm_ascend_triton.runtime.launch import CHECK_ENV

# fp32 outputs of O(1): the kernel and the reference share every int8 value and int32 sum; only
# the last bits of exp (SiLU) may differ.
ATOL = 1e-4


def checks(on: bool):
    """Input checks on/off for a block: `launch.input_checks` where the runtime has it (the switch
    is read once per process there), else VAT_CHECK_INPUTS."""
    from vllm_ascend_triton.runtime import launch

    if hasattr(launch, "input_checks"):
        return launch.input_checks(on)
    return mock.patch.dict(os.environ, {CHECK_ENV: "1" if on else "0"})


@pytest.fixture(autouse=True)
def _checks_off():
    with checks(False):
        yield


def _weights(num_local: int, hidden: int, inter: int, gen: torch.Generator):
    w13, s13 = quantize_weight_per_channel(
        torch.randn(num_local, 2 * inter, hidden, generator=gen) / hidden**0.5
    )
    w2, s2 = quantize_weight_per_channel(torch.randn(num_local, hidden, inter, generator=gen) / inter**0.5)
    return w13, w2, s13, s2


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("with_map", [False, True])
def test_w8a8_drops_bad_routes_and_keeps_nan_in_its_token(with_map, ids_dtype):
    def case():
        gen = torch.Generator().manual_seed(3)
        ids = _hostile_ids(ids_dtype)
        m, k = ids.shape
        num_local = 3 if with_map else E
        emap = _map(ids_dtype, num_local) if with_map else None
        hidden, inter = 64, 32
        x = torch.randn(m, hidden, generator=gen)
        x[6, 1] = float("nan")  # token 6 only
        w = torch.rand(m, k, generator=gen)
        w[1, 0] = float("nan")  # weight of the dropped id -1
        w13, w2, s13, s2 = _weights(num_local, hidden, inter, gen)
        expected = fused_experts_w8a8_ref(x, w13, w2, s13, s2, w, ids, expert_map=emap, global_num_experts=E)
        others = [t for t in range(m) if t != 6]
        assert torch.isfinite(expected[others]).all()
        if not with_map:  # with the map, token 6's expert is dropped (entry 100): zeros
            assert torch.isnan(expected[6]).all()
        return guarded_run(
            lambda: fused_experts_w8a8(x, w13, w2, s13, s2, w, ids, expert_map=emap, global_num_experts=E),
            [x, w13, w2, s13, s2, w, ids] + ([emap] if with_map else []),
            expected,
            ATOL,
        )

    run_isolated(case)


def test_w8a8_non_finite_scales_of_an_unused_expert_stay_out():
    def case():
        gen = torch.Generator().manual_seed(5)
        ids = torch.tensor([[0, 2], [2, 1], [1, 0]], dtype=torch.int32)  # expert 3 unused
        x = torch.randn(3, 32, generator=gen)
        w = torch.rand(3, 2, generator=gen)
        w13, w2, s13, s2 = _weights(4, 32, 16, gen)
        s13[3] = float("nan")
        s2[3] = float("inf")
        expected = fused_experts_w8a8_ref(x, w13, w2, s13, s2, w, ids)
        assert torch.isfinite(expected).all()
        return guarded_run(
            lambda: fused_experts_w8a8(x, w13, w2, s13, s2, w, ids),
            [x, w13, w2, s13, s2, w, ids],
            expected,
            ATOL,
        )

    run_isolated(case)


def test_w8a8_inf_activation_and_inf_scale_stay_in_their_tokens():
    def case():
        gen = torch.Generator().manual_seed(6)
        ids = torch.tensor([[0, 1], [1, 2], [2, 0], [3, 3]], dtype=torch.int32)
        x = torch.randn(4, 32, generator=gen)
        x[0, 4] = float("inf")  # token 0
        w = torch.rand(4, 2, generator=gen)
        w13, w2, s13, s2 = _weights(4, 32, 16, gen)
        s2[3, 5] = float("inf")  # expert 3: only token 3 uses it
        expected = fused_experts_w8a8_ref(x, w13, w2, s13, s2, w, ids)
        assert torch.isfinite(expected[[1, 2]]).all() and not torch.isfinite(expected[0]).all()
        return guarded_run(
            lambda: fused_experts_w8a8(x, w13, w2, s13, s2, w, ids),
            [x, w13, w2, s13, s2, w, ids],
            expected,
            ATOL,
        )

    run_isolated(case)


def test_quant_writes_only_its_rows():
    def case():
        x = torch.randn(5, 40)
        x[1] = 0.0
        x[3, 7] = float("nan")
        return guarded_run(lambda: dynamic_per_token_quant(x), [x], dynamic_per_token_quant_ref(x), 0.0)

    run_isolated(case)
