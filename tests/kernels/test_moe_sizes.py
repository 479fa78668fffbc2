"""MoE kernels at production sizes: 8K-token prefill chunks, 256 and 512 experts, top-8 and top-16.

The interpreter runs one program after another, so these use larger tiles than the NPU defaults
(`override_configs`: the same kernels and index math, fewer loop trips) to stay a few seconds each;
they are marked slow. The scratch figures are computed from the launch plan (no device needed)."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend_triton.kernels import grouped_topk, moe_align_block_size
from vllm_ascend_triton.kernels.fused_moe import _route
from vllm_ascend_triton.kernels.fused_moe.reference import moe_permute_ref
from vllm_ascend_triton.kernels.moe_routing.reference import grouped_topk_ref, moe_align_block_size_ref
from vllm_ascend_triton.kernels.moe_sort import plan_sort, sort_scratch_bytes
from vllm_ascend_triton.runtime.configs import override_configs
from vllm_ascend_triton.runtime.device import plan_for
from vllm_ascend_triton.runtime.sku import SKUS

TOKENS = 8192
FAST_SORT = {"moe_sort_count": {"BLOCK_N": 512}, "moe_align_layout": {"BLOCK_B": 256, "BLOCK_S": 8192}}


def _routes(m: int, k: int, e: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Distinct experts per token, skewed so some experts get many routes and some none.
    scores = torch.rand(m, e, generator=gen) * torch.linspace(0.2, 1.0, e)
    return torch.topk(scores, k).indices.to(torch.int32)


@pytest.mark.parametrize("e,k", [(512, 8), (256, 16)])
def test_scratch_is_cores_times_experts(e, k):
    """The sort's scratch at 8K tokens: one int32 count row per program (<= vector cores); the
    per-chunk design it replaced needed two [chunks, experts] int32 buffers."""
    numel = TOKENS * k
    for sku in SKUS.values():
        with plan_for(sku.name) as dev:
            plan = plan_sort(numel, e, e, has_map=True, device=dev)
            assert plan.runs <= dev.vector_cores
            assert plan.scratch_bytes == plan.runs * e * 4 <= dev.vector_cores * e * 4
            assert sort_scratch_bytes(numel, e, device=dev) <= dev.vector_cores * e * 4
    with plan_for("Ascend910B3") as dev:
        assert sort_scratch_bytes(TOKENS * 8, 512, device=dev) == 40 * 512 * 4  # 81,920 bytes
    old_chunks = numel // max(8, 4096 // e)  # the old moe_permute: BLOCK_S = 4096 / E slots per chunk
    assert 2 * old_chunks * e * 4 >= 16 * 2**20  # two >= 16 MiB buffers at 8K x top-8 x 512 experts


@pytest.mark.slow
@pytest.mark.parametrize("e,k,with_map", [(512, 8, False), (256, 16, True)])
def test_align_8k_tokens(e, k, with_map):
    ids = _routes(TOKENS, k, e, seed=e)
    emap = None
    if with_map:  # expert parallelism: this rank owns every fourth expert
        emap = torch.full((e,), -1, dtype=torch.int32)
        emap[::4] = torch.arange(e // 4, dtype=torch.int32)
    with override_configs(FAST_SORT):
        out = moe_align_block_size(ids, 64, e, emap)
    for got, want in zip(out, moe_align_block_size_ref(ids, 64, e, emap), strict=True):
        assert torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("e,k,num_local", [(512, 8, None), (256, 16, 64)])
def test_permute_sort_8k_tokens(e, k, num_local):
    """moe_permute's sort (counts, offsets, inverse and forward permutation) at 8K tokens; the row
    gather after it is one scalar index per row, covered at small sizes."""
    ids = _routes(TOKENS, k, e, seed=k)
    emap = None
    if num_local:
        emap = torch.full((e,), -1, dtype=torch.int32)
        emap[torch.randperm(e, generator=torch.Generator().manual_seed(1))[:num_local]] = torch.arange(
            num_local, dtype=torch.int32
        )
    with override_configs(FAST_SORT):
        counts, offsets, inv, permuted_idx = _route(ids, emap, e, num_local or e)
    ref = moe_permute_ref(torch.zeros(TOKENS, 1), ids, e, emap, num_local)
    assert torch.equal(counts, ref.tokens_per_expert)
    assert torch.equal(offsets, ref.expert_first_token_offset)
    assert torch.equal(inv, ref.inv_permuted_idx)
    assert torch.equal(permuted_idx, ref.permuted_idx)


@pytest.mark.slow
def test_grouped_topk_8k_tokens_deepseek_v3():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(TOKENS, 256, generator=gen)
    bias = torch.randn(256, generator=gen) * 0.1
    with override_configs({"grouped_topk": {"BLOCK_M": 256}}):
        w, i = grouped_topk(logits, 8, True, 8, 4, "sigmoid", bias, 2.5)
    rw, ri = grouped_topk_ref(logits, 8, True, 8, 4, "sigmoid", bias, 2.5)
    assert torch.equal(i, ri)
    torch.testing.assert_close(w, rw, atol=1e-5, rtol=0)
