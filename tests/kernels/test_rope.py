"""Rotary embedding kernels against vLLM's own references (RotaryEmbedding.forward_static,
MRotaryEmbedding.forward_native) under the interpreter; bad inputs; lowering for Ascend."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_ascend_triton.kernels.rope import mrope_rotary_embedding, rotary_embedding
from vllm_ascend_triton.runtime import launch

vllm_rope = pytest.importorskip("vllm.model_executor.layers.rotary_embedding")
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding  # noqa: E402
from vllm.model_executor.layers.rotary_embedding.mrope import MRotaryEmbedding  # noqa: E402

ATOL = {torch.float32: 1e-5, torch.float16: 1e-3}
MAX_POS = 64


def _cache(rot_dim: int, dtype: torch.dtype, max_pos: int = MAX_POS) -> torch.Tensor:
    """A cos/sin cache built the way vLLM builds it (base 10000)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float) / rot_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert actual.shape == expected.shape
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"max abs error {err} > {atol}"


@dataclasses.dataclass(frozen=True)
class Case:
    head_size: int
    rot_dim: int
    heads: int
    kv_heads: int  # 0: key=None
    neox: bool
    dtype: torch.dtype
    layout: str = "2d"  # "2d" [T, H*D], "3d" [T, H, D], "qkv" slices of a fused qkv tensor
    pos_shape: tuple[int, ...] = (5,)
    cache_dtype: torch.dtype | None = None  # None: the query's dtype

    @property
    def id(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        cd = f"-cache_{str(self.cache_dtype).removeprefix('torch.')}" if self.cache_dtype else ""
        pos = "x".join(map(str, self.pos_shape))
        style = "neox" if self.neox else "gptj"
        shape = f"D{self.head_size}-R{self.rot_dim}-H{self.heads}-K{self.kv_heads}"
        return f"{style}-{shape}-{dt}-{self.layout}-P{pos}{cd}"


# Every axis covered, combined pairwise rather than as a full cartesian grid (interpreter time).
CASES = [
    Case(64, 64, 4, 2, True, torch.float32),
    Case(64, 32, 3, 1, False, torch.float16, "3d"),
    Case(80, 80, 3, 3, False, torch.float32, "qkv", (2, 3)),
    Case(80, 32, 5, 1, True, torch.float16, "qkv"),
    Case(96, 96, 2, 0, True, torch.float16, "2d", (2, 3)),
    Case(96, 64, 3, 1, False, torch.float32, "3d", cache_dtype=torch.float16),
    Case(120, 120, 1, 1, True, torch.float32, "3d", (1,)),
    Case(120, 60, 3, 2, False, torch.float16, "2d", cache_dtype=torch.float32),
    Case(128, 128, 5, 1, False, torch.float16, "qkv"),
    Case(128, 64, 2, 2, True, torch.float32, "2d", (2, 3), cache_dtype=torch.float16),
    Case(256, 256, 2, 1, True, torch.float16, "3d"),
    Case(256, 64, 1, 0, False, torch.float32, "qkv"),
]


def _make_qk(case: Case, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """query, key and (for the qkv layout) the fused parent tensor."""
    d = case.head_size
    if case.layout == "qkv":
        value_heads = max(case.kv_heads, 1)
        qkv = torch.randn(num_tokens, (case.heads + case.kv_heads + value_heads) * d).to(case.dtype)
        query = qkv[:, : case.heads * d]
        key = qkv[:, case.heads * d : (case.heads + case.kv_heads) * d] if case.kv_heads else None
        return query, key, qkv
    query = torch.randn(num_tokens, case.heads, d).to(case.dtype)
    key = torch.randn(num_tokens, case.kv_heads, d).to(case.dtype) if case.kv_heads else None
    if case.layout == "2d":
        query = query.flatten(1)
        key = key.flatten(1) if key is not None else None
    return query, key, None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rotary_embedding_matches_vllm(case: Case) -> None:
    num_tokens = 1
    for n in case.pos_shape:
        num_tokens *= n
    # int32 positions with the [B, S] cases, int64 otherwise.
    pos_dtype = torch.int32 if len(case.pos_shape) == 2 else torch.int64
    positions = torch.randint(0, MAX_POS, case.pos_shape, dtype=pos_dtype)
    cache = _cache(case.rot_dim, case.cache_dtype or case.dtype)
    query, key, qkv = _make_qk(case, num_tokens)
    value_before = (
        qkv[:, (case.heads + case.kv_heads) * case.head_size :].clone() if qkv is not None else None
    )
    eq, ek = RotaryEmbedding.forward_static(
        positions,
        query.clone(),
        key.clone() if key is not None else None,
        case.head_size,
        case.rot_dim,
        cache,
        case.neox,
    )
    out_q, out_k = rotary_embedding(positions, query, key, case.head_size, cache, case.neox)
    assert out_q is query and out_k is key  # in place
    _assert_close(query, eq, ATOL[case.dtype])
    if key is not None:
        _assert_close(key, ek, ATOL[case.dtype])
    if value_before is not None:  # the rest of the fused tensor is untouched
        assert torch.equal(qkv[:, (case.heads + case.kv_heads) * case.head_size :], value_before)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    head_size=st.sampled_from([64, 80, 96, 120, 128, 256]),
    rot_frac=st.sampled_from([1.0, 0.5, 0.25]),
    heads=st.integers(1, 4),
    kv_heads=st.integers(0, 3),
    neox=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    layout=st.sampled_from(["2d", "3d", "qkv"]),
    num_tokens=st.integers(1, 4),
)
def test_rotary_embedding_random_configs(
    head_size, rot_frac, heads, kv_heads, neox, dtype, layout, num_tokens
):
    rot_dim = max(2, int(head_size * rot_frac) // 2 * 2)
    case = Case(head_size, rot_dim, heads, kv_heads, neox, dtype, layout, (num_tokens,))
    positions = torch.randint(0, MAX_POS, (num_tokens,))
    cache = _cache(rot_dim, dtype)
    query, key, _ = _make_qk(case, num_tokens)
    eq, ek = RotaryEmbedding.forward_static(
        positions, query.clone(), key.clone() if key is not None else None, head_size, rot_dim, cache, neox
    )
    rotary_embedding(positions, query, key, head_size, cache, neox)
    _assert_close(query, eq, ATOL[dtype])
    if key is not None:
        _assert_close(key, ek, ATOL[dtype])


@pytest.mark.parametrize("neox,layout", [(True, "qkv"), (False, "3d")])
def test_bf16_through_the_interpreter_shim(neox: bool, layout: str) -> None:
    case = Case(64, 48, 3, 1, neox, torch.bfloat16, layout)
    positions = torch.randint(0, MAX_POS, (4,))
    query, key, qkv = _make_qk(case, 4)
    if layout == "3d":  # a head-strided view: every other head of a wider tensor
        query = torch.randn(4, 6, 64).bfloat16()[:, ::2]
    cache = _cache(48, torch.float32)  # the cache in another dtype, as vLLM allows
    eq, ek = RotaryEmbedding.forward_static(positions, query.clone(), key.clone(), 64, 48, cache, neox)
    rotary_embedding(positions, query, key, 64, cache, neox)
    assert query.dtype == torch.bfloat16
    # vLLM rounds every bf16 op; the shim computes in fp32: about one bf16 ulp apart.
    torch.testing.assert_close(query, eq, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(key, ek, atol=2e-2, rtol=2e-2)


def test_batched_query_with_batched_positions() -> None:
    positions = torch.randint(0, MAX_POS, (2, 3))
    query = torch.randn(2, 3, 2 * 64)
    key = torch.randn(2, 3, 64)
    cache = _cache(64, torch.float32)
    eq, ek = RotaryEmbedding.forward_static(positions, query.clone(), key.clone(), 64, 64, cache, True)
    rotary_embedding(positions, query, key, 64, cache, True)
    _assert_close(query, eq, 1e-5)
    _assert_close(key, ek, 1e-5)


def test_more_tokens_than_vector_cores() -> None:
    # 40 vector cores planned (Ascend910B3): programs loop over several tokens each.
    positions = torch.randint(0, MAX_POS, (93,))
    query, key = torch.randn(93, 64), torch.randn(93, 64)
    cache = _cache(32, torch.float32)
    eq, ek = RotaryEmbedding.forward_static(positions, query.clone(), key.clone(), 64, 32, cache, False)
    rotary_embedding(positions, query, key, 64, cache, False)
    _assert_close(query, eq, 1e-5)
    _assert_close(key, ek, 1e-5)


def test_head_tiles_smaller_than_the_head_count() -> None:
    # A tuned config may split the heads into several tiles; the tail tile is masked.
    from vllm_ascend_triton.runtime.configs import override_configs
    from vllm_ascend_triton.runtime.launch import record_launches

    with override_configs({"rope": {"BLOCK_H": 2}}), record_launches() as launched:
        _check_split_head_tiles()
    assert {spec.constexprs["BLOCK_H"] for spec in launched} == {2}


def test_tuned_head_tile_is_capped_by_the_ub_for_the_dtype() -> None:
    # Tuned entries carry no dtype: BLOCK_H tuned on fp16 can be twice what an fp32 tile fits.
    from vllm_ascend_triton.kernels.rope import _max_block_h
    from vllm_ascend_triton.runtime.configs import override_configs
    from vllm_ascend_triton.runtime.launch import record_launches

    fp16_cap = _max_block_h(32, torch.float16)
    assert _max_block_h(32, torch.float32) == fp16_cap // 2
    positions = torch.randint(0, MAX_POS, (3,))
    heads = 2 * fp16_cap
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-3)):
        query, key = torch.randn(3, heads * 64, dtype=dtype), torch.randn(3, 64, dtype=dtype)
        cache = _cache(64, dtype)
        eq, ek = RotaryEmbedding.forward_static(positions, query.clone(), key.clone(), 64, 64, cache, True)
        with override_configs({"rope": {"BLOCK_H": fp16_cap}}), record_launches() as launched:
            rotary_embedding(positions, query, key, 64, cache, True)
        assert [spec.constexprs["BLOCK_H"] for spec in launched] == [_max_block_h(32, dtype)]
        _assert_close(query, eq, tol)
        _assert_close(key, ek, tol)


def _check_split_head_tiles() -> None:
    positions = torch.randint(0, MAX_POS, (3,))
    query, key = torch.randn(3, 5 * 64).half(), torch.randn(3, 3 * 64).half()
    cache = _cache(64, torch.float16)
    for neox in (True, False):
        eq, ek = RotaryEmbedding.forward_static(positions, query.clone(), key.clone(), 64, 64, cache, neox)
        rotary_embedding(positions, query, key, 64, cache, neox)
        _assert_close(query, eq, 1e-3)
        _assert_close(key, ek, 1e-3)


@pytest.mark.parametrize("neox", [True, False])
def test_offsets_index_positions_plus_offsets(neox: bool) -> None:
    # DeepSeek YaRN style: vLLM indexes the cache at positions + offsets.
    positions = torch.randint(0, MAX_POS // 2, (5,))
    offsets = torch.randint(0, MAX_POS // 2, (5,), dtype=torch.int32)
    query, key = torch.randn(5, 2 * 64), torch.randn(5, 64)
    cache = _cache(64, torch.float32)
    eq, ek = RotaryEmbedding.forward_static(
        positions + offsets, query.clone(), key.clone(), 64, 64, cache, neox
    )
    rotary_embedding(positions, query, key, 64, cache, neox, offsets=offsets)
    _assert_close(query, eq, 1e-5)
    _assert_close(key, ek, 1e-5)


def test_empty_batch_is_a_no_op() -> None:
    query, key = torch.empty(0, 2 * 64), torch.empty(0, 64)
    rotary_embedding(torch.empty(0, dtype=torch.long), query, key, 64, _cache(64, torch.float32), True)
    assert query.shape == (0, 128)


# --- positions outside the cache --------------------------------------------------------------


@pytest.mark.parametrize("bad", [MAX_POS, -1, 1 << 40], ids=["max_pos", "negative", "huge"])
def test_out_of_range_position_raises_with_checks_on(monkeypatch: pytest.MonkeyPatch, bad: int) -> None:
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    positions = torch.tensor([0, bad, 3])
    query = torch.randn(3, 64)
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding(positions, query, None, 64, _cache(64, torch.float32), True)


def test_out_of_range_offsets_raise_with_checks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    positions = torch.tensor([0, MAX_POS - 1])
    with pytest.raises(ValueError, match="offsets"):
        rotary_embedding(
            positions, torch.randn(2, 64), None, 64, _cache(64, torch.float32), True, torch.tensor([0, 1])
        )


@pytest.mark.parametrize("neox", [True, False])
def test_out_of_range_positions_are_masked_with_checks_off(
    monkeypatch: pytest.MonkeyPatch, neox: bool
) -> None:
    monkeypatch.setattr(launch, "INPUT_CHECKS", False)
    # The cache is a view inside a NaN-filled buffer: any read outside it would poison a result.
    backing = torch.full((MAX_POS + 8, 64), float("nan"))
    backing[4 : 4 + MAX_POS] = _cache(64, torch.float32)
    cache = backing[4 : 4 + MAX_POS]
    positions = torch.tensor([5, MAX_POS, -1, 1 << 40, MAX_POS - 1])
    query, key = torch.randn(5, 2 * 64), torch.randn(5, 64)
    q0, k0 = query.clone(), key.clone()
    rotary_embedding(positions, query, key, 64, cache, neox)
    good = torch.tensor([0, 4])
    eq, ek = RotaryEmbedding.forward_static(positions[good], q0[good], k0[good], 64, 64, cache, neox)
    _assert_close(query[good], eq, 1e-5)
    _assert_close(key[good], ek, 1e-5)
    bad = torch.tensor([1, 2, 3])
    assert torch.equal(query[bad], q0[bad]) and torch.equal(key[bad], k0[bad])  # left unchanged


def test_mrope_out_of_range_masked_or_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(64, torch.float32)
    positions = torch.tensor([[1, 2], [3, MAX_POS], [5, 6]])
    query = torch.randn(2, 64)
    monkeypatch.setattr(launch, "INPUT_CHECKS", True)
    with pytest.raises(ValueError, match="positions"):
        mrope_rotary_embedding(positions, query.clone(), None, 64, cache, True, [8, 12, 12])
    monkeypatch.setattr(launch, "INPUT_CHECKS", False)
    q0 = query.clone()
    mrope_rotary_embedding(positions, query, None, 64, cache, True, [8, 12, 12])
    assert torch.equal(query[1], q0[1])  # token with an H position outside the cache: unchanged
    assert not torch.equal(query[0], q0[0])


# --- MRoPE ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):
        yield


MROPE_CASES = [
    # (head_size, rot_dim, mrope_section, interleaved, neox, dtype, heads, kv_heads, layout)
    (128, 128, [16, 24, 24], False, True, torch.float32, 3, 1, "2d"),  # Qwen2-VL / Qwen2.5-VL
    (128, 128, [24, 20, 20], True, True, torch.float16, 2, 2, "3d"),  # Qwen3-VL interleaved
    (80, 64, [8, 12, 12], False, False, torch.float16, 3, 1, "qkv"),
    (64, 64, [10, 11, 11], True, False, torch.float32, 1, 1, "2d"),
]


@pytest.mark.parametrize(
    "head_size,rot_dim,section,interleaved,neox,dtype,heads,kv_heads,layout",
    MROPE_CASES,
    ids=[f"D{c[0]}-R{c[1]}-{'inter' if c[3] else 'chunk'}-{'neox' if c[4] else 'gptj'}" for c in MROPE_CASES],
)
def test_mrope_matches_vllm(
    vllm_config, head_size, rot_dim, section, interleaved, neox, dtype, heads, kv_heads, layout
) -> None:
    m = MRotaryEmbedding(head_size, rot_dim, 32, 10000.0, neox, dtype, section, interleaved)
    num_tokens = 5
    positions = torch.randint(0, m.cos_sin_cache.shape[0], (3, num_tokens))
    case = Case(head_size, rot_dim, heads, kv_heads, neox, dtype, layout)
    query, key, _ = _make_qk(case, num_tokens)
    # vLLM's reference wants [T, H*D] tensors.
    eq, ek = m.forward_native(
        positions, query.reshape(num_tokens, -1).clone(), key.reshape(num_tokens, -1).clone()
    )
    mrope_rotary_embedding(positions, query, key, head_size, m.cos_sin_cache, neox, section, interleaved)
    _assert_close(query.reshape(num_tokens, -1), eq, ATOL[dtype])
    _assert_close(key.reshape(num_tokens, -1), ek, ATOL[dtype])


def test_mrope_text_only_positions_are_plain_rope(vllm_config) -> None:
    m = MRotaryEmbedding(64, 64, 32, 10000.0, True, torch.float32, [8, 12, 12], False)
    positions = torch.randint(0, 64, (4,))
    query, key = torch.randn(4, 2 * 64), torch.randn(4, 64)
    eq, ek = m.forward_native(positions, query.clone(), key.clone())
    mrope_rotary_embedding(positions, query, key, 64, m.cos_sin_cache, True, [8, 12, 12])
    _assert_close(query, eq, 1e-5)
    _assert_close(key, ek, 1e-5)


# --- bad input: one case per argument and failure ------------------------------------------------


def _good() -> dict:
    return dict(
        positions=torch.randint(0, MAX_POS, (3,)),
        query=torch.randn(3, 2 * 64),
        key=torch.randn(3, 64),
        head_size=64,
        cos_sin_cache=_cache(32, torch.float32),
        is_neox=True,
    )


BAD_ROPE = [
    ("positions_dtype", {"positions": torch.zeros(3)}, TypeError, "positions"),
    ("positions_rank", {"positions": torch.zeros(1, 1, 3, dtype=torch.long)}, ValueError, "positions"),
    ("positions_not_tensor", {"positions": [0, 1, 2]}, TypeError, "positions"),
    (
        "positions_device",
        {"positions": torch.zeros(3, dtype=torch.long, device="meta")},
        ValueError,
        "positions",
    ),
    ("query_dtype", {"query": torch.zeros(3, 128, dtype=torch.int32)}, TypeError, "query"),
    ("query_rank", {"query": torch.zeros(3 * 128)}, ValueError, "query"),
    ("query_tokens", {"query": torch.zeros(4, 128)}, ValueError, "query"),
    ("query_not_head_multiple", {"query": torch.zeros(3, 100)}, ValueError, "query"),
    ("query_3d_head_size", {"query": torch.zeros(3, 2, 32)}, ValueError, "query"),
    ("query_last_dim_strided", {"query": torch.zeros(3, 256)[:, ::2]}, ValueError, "query"),
    ("query_device", {"query": torch.zeros(3, 128, device="meta")}, ValueError, "query"),
    ("key_dtype_differs", {"key": torch.zeros(3, 64, dtype=torch.float16)}, TypeError, "key"),
    ("key_tokens", {"key": torch.zeros(2, 64)}, ValueError, "key"),
    ("key_not_head_multiple", {"key": torch.zeros(3, 65)}, ValueError, "key"),
    ("key_not_tensor", {"key": 3}, TypeError, "key"),
    ("head_size_zero", {"head_size": 0}, ValueError, "head_size"),
    ("head_size_float", {"head_size": 64.0}, TypeError, "head_size"),
    (
        "cache_dtype",
        {"cos_sin_cache": torch.zeros(MAX_POS, 32, dtype=torch.int64)},
        TypeError,
        "cos_sin_cache",
    ),
    ("cache_rank", {"cos_sin_cache": torch.zeros(MAX_POS * 32)}, ValueError, "cos_sin_cache"),
    ("rot_dim_odd", {"cos_sin_cache": torch.zeros(MAX_POS, 31)}, ValueError, "rot_dim"),
    ("rot_dim_gt_head_size", {"cos_sin_cache": torch.zeros(MAX_POS, 66)}, ValueError, "rot_dim"),
    ("cache_strided", {"cos_sin_cache": torch.zeros(MAX_POS, 64)[:, ::2]}, ValueError, "cos_sin_cache"),
    ("is_neox_not_bool", {"is_neox": 1}, TypeError, "is_neox"),
    ("offsets_shape", {"offsets": torch.zeros(4, dtype=torch.long)}, ValueError, "offsets"),
    ("offsets_dtype", {"offsets": torch.zeros(3)}, TypeError, "offsets"),
]


@pytest.mark.parametrize("name,override,exc,match", BAD_ROPE, ids=[b[0] for b in BAD_ROPE])
def test_rotary_embedding_rejects_bad_input(name, override, exc, match) -> None:
    args = {**_good(), **override}
    with pytest.raises(exc, match=match):
        rotary_embedding(**args)


def test_batched_query_whose_token_dims_cannot_merge_is_rejected() -> None:
    positions = torch.randint(0, MAX_POS, (2, 3))
    query = torch.zeros(2, 4, 128)[:, :3]  # batch stride 512 != 3 * 128
    with pytest.raises(ValueError, match="query"):
        rotary_embedding(positions, query, None, 64, _cache(32, torch.float32), True)


BAD_MROPE = [
    ("section_sum", {"mrope_section": [8, 8, 8]}, ValueError, "mrope_section"),
    ("section_length", {"mrope_section": [16, 16]}, TypeError, "mrope_section"),
    ("section_negative", {"mrope_section": [-1, 9, 8]}, ValueError, "mrope_section"),
    ("positions_rows", {"positions": torch.zeros(2, 3, dtype=torch.long)}, ValueError, "positions"),
    ("query_tokens", {"query": torch.zeros(4, 128)}, ValueError, "query"),
    ("interleaved_not_bool", {"mrope_interleaved": "yes"}, TypeError, "mrope_interleaved"),
]


@pytest.mark.parametrize("name,override,exc,match", BAD_MROPE, ids=[b[0] for b in BAD_MROPE])
def test_mrope_rejects_bad_input(name, override, exc, match) -> None:
    args = {
        **_good(),
        "positions": torch.randint(0, MAX_POS, (3, 3)),
        "mrope_section": [4, 6, 6],
        "mrope_interleaved": False,
        **override,
    }
    with pytest.raises(exc, match=match):
        mrope_rotary_embedding(**args)


# --- self check and lowering ----------------------------------------------------------------------


def test_self_check_passes() -> None:
    from vllm_ascend_triton.kernels.rope.checks import self_check

    results = self_check()
    assert 0 < len(results) <= 6
    assert all(r.ok for r in results), [r for r in results if not r.ok]


@pytest.fixture(scope="module")
def lowered():
    from vllm_ascend_triton.codegen.compile import variant_specs
    from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many

    requests = [
        LoweringRequest.from_spec(vs.spec, sku, vs.label)
        for sku in ("Ascend910B3", "Ascend910_9392")
        for vs in variant_specs(sku, ["rope"])
    ]
    return lower_many(requests, jobs=2)


@pytest.mark.slow
def test_kernels_lower_for_ascend(lowered) -> None:
    from vllm_ascend_triton.codegen.report import parse_adapter_ir
    from vllm_ascend_triton.runtime.sku import get_sku

    assert {r.request.sku for r in lowered} == {"Ascend910B3", "Ascend910_9392"}
    for res in lowered:
        label = f"{res.request.label}@{res.request.sku}"
        assert res.ok, f"{label}: {res.error}"
        report = parse_adapter_ir(res.ttadapter)
        assert report.mix_mode == "aiv", label  # vector cores only
        assert report.fits_ub(get_sku(res.request.sku).ub_bytes, multibuffer=True), (label, report.ub_bytes)
        # Positions are scalars per token and cache rows contiguous loads: no gathers.
        assert report.discrete_accesses == 0, label
