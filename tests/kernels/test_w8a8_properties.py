"""Property tests of the W8A8 MoE kernels against the torch references (hypothesis, derandomized,
few small examples for the interpreter's sake): shapes, dtypes, expert maps and adversarial ids in
both check modes (checks on: a ValueError exactly when an id is out of range; off: the reference's
drop-the-route result)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_w8a8_hostile import checks

from vllm_ascend_triton.kernels import dynamic_per_token_quant, fused_experts_w8a8
from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import (
    dynamic_per_token_quant_ref,
    fused_experts_w8a8_ref,
    quantize_weight_per_channel,
)

FEW = settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(
    rows=st.integers(1, 6),
    hidden=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    magnitude=st.sampled_from([1e-6, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_quant_property(rows, hidden, dtype, magnitude, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, hidden, generator=gen) * magnitude).to(dtype)
    q, scale = dynamic_per_token_quant(x)
    ref_q, ref_scale = dynamic_per_token_quant_ref(x)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)
    # dequantized values are within half a step of x (the int8 grid of each row)
    err = (q.float() * scale - x.float()).abs()
    assert (err <= scale * (0.5 + 1e-4)).all()  # x * (1 / scale) is x / scale to 2^-23 relative


@FEW
@given(
    m=st.integers(0, 7),
    e=st.integers(1, 12),
    k=st.integers(1, 4),
    hidden=st.sampled_from([16, 40, 96]),
    inter=st.sampled_from([8, 24, 64]),
    local_share=st.sampled_from([None, 0.5, 1.0]),
    bad_ids=st.booleans(),
    checks_on=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_experts_w8a8_property(m, e, k, hidden, inter, local_share, bad_ids, checks_on, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, e, (m, k), generator=gen, dtype=torch.int32)
    if bad_ids and m:
        ids[0, 0] = -1
        ids[m - 1, k - 1] = e + 3
    emap = None
    num_local = e
    if local_share is not None:
        num_local = max(1, int(e * local_share))
        chosen = torch.randperm(e, generator=gen)[:num_local]
        emap = torch.full((e,), -1, dtype=torch.int32)
        emap[chosen] = torch.arange(num_local, dtype=torch.int32)
    w = torch.rand(m, k, generator=gen)
    x = torch.randn(m, hidden, generator=gen)
    w13, s13 = quantize_weight_per_channel(
        torch.randn(num_local, 2 * inter, hidden, generator=gen) / hidden**0.5
    )
    w2, s2 = quantize_weight_per_channel(torch.randn(num_local, hidden, inter, generator=gen) / inter**0.5)
    call = lambda: fused_experts_w8a8(  # noqa: E731
        x, w13, w2, s13, s2, w, ids, expert_map=emap, global_num_experts=e
    )
    with checks(checks_on):
        if checks_on and bad_ids and m:
            with pytest.raises(ValueError, match="topk_ids"):
                call()
            return
        out = call()
    expected = fused_experts_w8a8_ref(x, w13, w2, s13, s2, w, ids, expert_map=emap, global_num_experts=e)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)
