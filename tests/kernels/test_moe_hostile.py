"""MoE kernels under hostile input with data checks off (VAT_CHECK_INPUTS=0), as on an NPU.

The contract (package docstrings of moe_routing and fused_moe): an expert id outside [0, E) (the
documented -1 included) and an expert_map entry outside [-1, L) drop the route: no row, no slot,
weight unused; a moe_unpermute index outside [-1, R) is skipped; NaN/inf stay in the tokens whose
data carries them. No kernel reads or writes outside its tensors.

How it is proved: each case's public call is first recorded as a dry run (`record_launches(
execute=False)`), which gives every launch with every tensor it touches (inputs, outputs,
scratch). Every storage is then copied into a larger buffer with poisoned bytes on both sides
and the launches run on those copies. After the run, every poisoned margin must be unchanged
(canaries: nothing written outside any tensor), the inputs must be unchanged, and the outputs
must equal the reference of the contract exactly (floats: to rounding). Each case runs twice,
with two poison patterns (zeros / NaN, then 0x5A bytes), so a read past an input changes a
result under at least one of them, and any stray write differs from at least one pattern.

Each case runs in a forked child process: an out-of-range store under the interpreter can
corrupt the heap or crash the process, and must fail one test, not the suite.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable

import pytest
import torch

from vllm_ascend_triton.kernels import (
    fused_experts,
    fused_topk,
    grouped_topk,
    moe_align_block_size,
    moe_permute,
    moe_unpermute,
)
from vllm_ascend_triton.kernels.fused_moe.reference import (
    fused_experts_ref,
    moe_permute_ref,
    moe_unpermute_ref,
)
from vllm_ascend_triton.kernels.moe_routing.reference import grouped_topk_ref, moe_align_block_size_ref
from vllm_ascend_triton.runtime import launch
from vllm_ascend_triton.runtime.launch import record_launches

PAD = 512  # poisoned bytes on each side of every tensor's storage
POISONS = ((0x00, 0xFF), (0x5A, 0x5A))  # (integer storages, float storages): zeros/NaN, then 0x5A
I32_MAX = 2**31 - 1


# ------------------------------------------------------------------------------------------
# The guarded run
# ------------------------------------------------------------------------------------------


class _Guarded:
    """Copies of every storage the recorded launches touch, inside poisoned margins."""

    def __init__(self, poison_int: int, poison_float: int):
        self.poison_int, self.poison_float = poison_int, poison_float
        self.buffers: dict[
            int, tuple[torch.Tensor, int, int, str]
        ] = {}  # key -> (full, nbytes, poison, name)

    def view(self, t: torch.Tensor, name: str) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.buffers:
            nbytes = storage.nbytes()
            poison = self.poison_float if t.dtype.is_floating_point else self.poison_int
            full = torch.full((PAD + nbytes + PAD,), poison, dtype=torch.uint8)
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,), (1,))
            full[PAD : PAD + nbytes] = raw
            self.buffers[key] = (full, nbytes, poison, name)
        full = self.buffers[key][0]
        size = t.element_size()
        offset = (PAD + t.storage_offset() * size) // size
        return torch.empty(0, dtype=t.dtype).set_(full.untyped_storage(), offset, t.shape, t.stride())

    def find(self, t: torch.Tensor) -> torch.Tensor:
        """The guarded copy of a tensor the launches touched (the tensor itself otherwise)."""
        return self.view(t, "?") if t.untyped_storage().data_ptr() in self.buffers else t

    def margin_errors(self) -> list[str]:
        errors = []
        for full, nbytes, poison, name in self.buffers.values():
            for side, margin in (("before", full[:PAD]), ("after", full[PAD + nbytes :])):
                changed = int((margin != poison).sum())
                if changed:
                    errors.append(f"{changed} bytes written {side} {name}")
        return errors


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple | list):
        return [t for item in obj for t in _tensors(item)]
    return []


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def _same(got: torch.Tensor, want: torch.Tensor, atol: float) -> str | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {tuple(got.shape)} {got.dtype} != {tuple(want.shape)} {want.dtype}"
    if not got.dtype.is_floating_point:
        bad = int((got != want).sum())
        return f"{bad} of {got.numel()} elements differ" if bad else None
    g, w = got.double(), want.double()
    if not torch.equal(torch.isnan(g), torch.isnan(w)):
        return "NaN positions differ"
    fin = ~torch.isnan(w)
    if not torch.equal(torch.isinf(g[fin]), torch.isinf(w[fin])):
        return "inf positions differ"
    ok = fin & ~torch.isinf(w)
    err = (g[ok] - w[ok]).abs().max().item() if ok.any() else 0.0
    return f"max abs error {err} > {atol}" if err > atol else None


def guarded_run(
    call: Callable[[], object], inputs: list[torch.Tensor], expected: object, atol: float
) -> list[str]:
    """Run `call`'s launches on poisoned copies; every violation of the contract, as text."""
    errors = []
    for poison_int, poison_float in POISONS:
        with record_launches(execute=False) as specs:
            result = call()
        guard = _Guarded(poison_int, poison_float)
        originals = [(t, guard.view(t, f"input {i}"), t.clone()) for i, t in enumerate(inputs)]
        for spec in specs:
            args = {
                k: guard.view(v, f"{spec.name}:{k}") if isinstance(v, torch.Tensor) else v
                for k, v in spec.args.items()
            }
            spec.kernel[spec.grid](**args, **spec.constexprs)
        tag = f"[poison {poison_int:#x}/{poison_float:#x}]"
        errors += [f"{tag} {e}" for e in guard.margin_errors()]
        for t, copy, before in originals:
            if not torch.equal(_bytes(copy), _bytes(before)):
                errors.append(f"{tag} an input of shape {tuple(t.shape)} was modified")
        got, want = _tensors(result), _tensors(expected)
        if len(got) != len(want):
            errors.append(f"{tag} {len(got)} outputs, expected {len(want)}")
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            why = _same(guard.find(g), w, atol)
            if why:
                errors.append(f"{tag} output {i}: {why}")
    return errors


def _child(case: Callable[[], list[str]], conn) -> None:
    torch.set_num_threads(1)  # no OpenMP pool inherited across fork
    try:
        conn.send(case())
    except BaseException:  # noqa: BLE001  (report any failure to the parent)
        conn.send([traceback.format_exc()])
    finally:
        conn.close()


def run_isolated(case: Callable[[], list[str]], timeout: float = 300.0) -> None:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, child))
    proc.start()
    child.close()
    try:
        errors = parent.recv() if parent.poll(timeout) else [f"no answer in {timeout} s"]
    except EOFError:  # the child died before answering
        errors = []
    proc.join(10)
    if proc.exitcode not in (0, None) and not errors:
        errors = [f"child process died with exit code {proc.exitcode}"]
    if proc.is_alive():
        proc.kill()
    assert not errors, "\n".join(errors)


@pytest.fixture(autouse=True)
def _checks_off(monkeypatch):
    monkeypatch.setattr(launch, "INPUT_CHECKS", False)


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------

E = 8


def _hostile_ids(dtype: torch.dtype) -> torch.Tensor:
    """Valid ids mixed with -1, other negatives, ids >= E, and (int64) ids that wrap to valid int32."""
    rows = [[1, 3], [-1, 2], [E, 5], [7, -7], [E + 100, 0], [3, I32_MAX], [4, 1], [6, 6]]
    if dtype == torch.int64:
        rows += [[2**32 + 1, 5], [-(2**40), 2**33]]  # wrap to 1 and to 0 in int32
    return torch.tensor(rows, dtype=dtype)


def _map(dtype: torch.dtype, num_local: int) -> torch.Tensor:
    """A map with valid entries, -1, < -1, >= L and (int64) entries that wrap to valid int32."""
    entries = [0, -1, 1, num_local, -5, 2, 100, 1]  # E = 8 entries
    if dtype == torch.int64:
        entries[6] = 2**32 + 2  # wraps to 2 in int32
    return torch.tensor(entries, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("with_map", [False, True])
def test_align_drops_out_of_range_ids_and_map_entries(dtype, with_map):
    def case():
        ids = _hostile_ids(dtype)
        emap = _map(dtype, E) if with_map else None
        emap_ref = emap
        return guarded_run(
            lambda: moe_align_block_size(ids, 4, E, emap, True),
            [ids] + ([emap] if with_map else []),
            moe_align_block_size_ref(ids, 4, E, emap_ref, True),
            0.0,
        )

    run_isolated(case)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_permute_drops_ids_past_the_experts(dtype):
    # Old code: an id >= L wrote its slot over another token's row of permuted_idx.
    def case():
        ids = _hostile_ids(dtype)
        x = torch.randn(ids.shape[0], 24)
        x[2, 3] = float("nan")
        x[5, 0] = float("inf")
        return guarded_run(lambda: moe_permute(x, ids, E), [x, ids], moe_permute_ref(x, ids, E), 0.0)

    run_isolated(case)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_permute_with_map_drops_ids_past_the_map_and_bad_entries(dtype):
    # Old code: an id >= E read past the expert map; map entries >= L or < -1 became rows.
    def case():
        num_local = 3
        ids = _hostile_ids(dtype)
        emap = _map(dtype, num_local)
        x = torch.randn(ids.shape[0], 16)
        return guarded_run(
            lambda: moe_permute(x, ids, E, emap, num_local),
            [x, ids, emap],
            moe_permute_ref(x, ids, E, emap, num_local),
            0.0,
        )

    run_isolated(case)


def test_unpermute_skips_indices_outside_the_rows():
    # Old code: an index >= R read past permuted_out; NaN weights of skipped entries leaked.
    def case():
        rows, hidden = 6, 40
        y = torch.randn(rows, hidden)
        y[4] = float("nan")  # referenced by no valid entry: must not show up
        inv = torch.tensor([[0, -1], [rows, 2], [-5, I32_MAX], [5, 1], [rows + 1000, -1]], dtype=torch.int32)
        w = torch.rand(5, 2)
        w[0, 1] = float("nan")  # weight of a skipped (-1) entry
        w[1, 0] = float("inf")  # weight of an out-of-range entry
        out = torch.full((5, hidden), 7.0)
        return guarded_run(
            lambda: moe_unpermute(y, w, inv, out=out), [y, w, inv], moe_unpermute_ref(y, w, inv), 1e-6
        )

    run_isolated(case)


@pytest.mark.parametrize("with_map", [False, True])
def test_fused_experts_drops_bad_routes_and_keeps_nan_in_its_token(with_map):
    def case():
        gen = torch.Generator().manual_seed(3)
        ids = _hostile_ids(torch.int32)
        m, k = ids.shape
        num_local = 3 if with_map else E
        emap = _map(torch.int32, num_local) if with_map else None
        hidden, inter = 32, 16
        x = torch.randn(m, hidden, generator=gen)
        x[6, 1] = float("nan")  # token 6 only
        w = torch.rand(m, k, generator=gen)
        w[1, 0] = float("nan")  # weight of the dropped id -1
        w13 = torch.randn(num_local, 2 * inter, hidden, generator=gen) / hidden**0.5
        w2 = torch.randn(num_local, hidden, inter, generator=gen) / inter**0.5
        expected = fused_experts_ref(x, w13, w2, w, ids, expert_map=emap, global_num_experts=E)
        return guarded_run(
            lambda: fused_experts(x, w13, w2, w, ids, expert_map=emap, global_num_experts=E),
            [x, w13, w2, w, ids] + ([emap] if with_map else []),
            expected,
            1e-5,
        )

    run_isolated(case)


def test_fused_experts_non_finite_weights_of_an_unused_expert_stay_out():
    def case():
        gen = torch.Generator().manual_seed(5)
        ids = torch.tensor([[0, 2], [2, 1], [1, 0]], dtype=torch.int32)  # expert 3 unused
        x = torch.randn(3, 16, generator=gen)
        w = torch.rand(3, 2, generator=gen)
        w13 = torch.randn(4, 32, 16, generator=gen) / 4
        w2 = torch.randn(4, 16, 16, generator=gen) / 4
        w13[3] = float("nan")
        w2[3] = float("inf")
        expected = fused_experts_ref(x, w13, w2, w, ids)
        assert torch.isfinite(expected).all()
        return guarded_run(lambda: fused_experts(x, w13, w2, w, ids), [x, w13, w2, w, ids], expected, 1e-5)

    run_isolated(case)


@pytest.mark.parametrize("grouped", [False, True])
def test_routing_with_non_finite_logits_and_bias(grouped):
    def case():
        logits = torch.randn(5, 16)
        logits[0, 3] = float("nan")
        logits[1] = float("inf")
        logits[2, :8] = -float("inf")
        bias = torch.randn(16) * 0.1
        bias[5] = float("nan")
        bias[9] = float("inf")
        if grouped:
            call = lambda: grouped_topk(logits, 4, True, 4, 2, "sigmoid", bias, 2.5)  # noqa: E731
            expected = grouped_topk_ref(logits, 4, True, 4, 2, "sigmoid", bias, 2.5)
        else:
            call = lambda: fused_topk(logits, 4, True, "sigmoid", bias, 2.5)  # noqa: E731
            expected = grouped_topk_ref(logits, 4, True, 1, 1, "sigmoid", bias, 2.5)
        return guarded_run(call, [logits, bias], expected, 1e-6)

    run_isolated(case)


def test_the_harness_catches_a_stray_write():
    """The canaries are real: a launch that writes one element past its output is reported."""

    def case():
        ids = torch.tensor([[1, 2]], dtype=torch.int32)
        x = torch.randn(1, 8)
        errors = guarded_run(lambda: moe_permute(x, ids, 4), [x, ids], moe_permute_ref(x, ids, 4), 0.0)
        assert not errors, errors
        # Now make the layout fill one element too many: the canary after permuted_idx must fire.
        from vllm_ascend_triton.kernels.fused_moe import _kernels  # noqa: F401
        from vllm_ascend_triton.runtime import launch

        # Widened where every launch passes (cached templates included), before it is recorded.
        original = launch.LaunchSpec.launch

        def widen(self):
            if self.name == "moe_permute_layout":
                object.__setattr__(self, "args", {**self.args, "numel": self.args["numel"] + 1})
            original(self)

        launch.LaunchSpec.launch = widen
        try:
            caught = guarded_run(lambda: moe_permute(x, ids, 4), [x, ids], moe_permute_ref(x, ids, 4), 0.0)
        finally:
            launch.LaunchSpec.launch = original
        return [] if any("written after" in e for e in caught) else [f"stray write not caught: {caught}"]

    run_isolated(case)


def test_isolation_reports_a_crash():
    def case():
        os._exit(139)  # as a segfaulting child would end

    with pytest.raises(AssertionError, match="exit code|no answer"):
        run_isolated(case, timeout=60)
