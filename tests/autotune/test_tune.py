"""`vat tune`: search spaces, the cost model, atomic files, resume, the refusal of `measured`
without a device, and the end-to-end loop (a tuned file changes what the runtime launches)."""

import json
import os

import pytest
import torch

from vllm_ascend_triton.autotune import spaces, tuner
from vllm_ascend_triton.cli import main
from vllm_ascend_triton.kernels import rotary_embedding
from vllm_ascend_triton.runtime import configs
from vllm_ascend_triton.runtime import perf_model as cost_model
from vllm_ascend_triton.runtime.device import plan_for
from vllm_ascend_triton.runtime.launch import record_launches
from vllm_ascend_triton.runtime.sku import get_sku

SKU = "Ascend910B3"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv(configs.TUNED_CONFIG_FOLDER_ENV, raising=False)
    monkeypatch.setattr(configs, "PACKAGED_CONFIG_DIR", tmp_path / "shipped")  # nothing shipped
    configs.clear_caches()
    yield
    configs.clear_caches()


def _rope_launch(sku=SKU):
    """The config a Llama-3-8B rope call launches with when planning for `sku` (dry run)."""
    q = torch.zeros(64, 32 * 128, dtype=torch.float16)
    k = torch.zeros(64, 8 * 128, dtype=torch.float16)
    with plan_for(sku), record_launches(execute=False) as specs:
        rotary_embedding(torch.zeros(64, dtype=torch.long), q, k, 128, torch.zeros(64, 128), True)
    (spec,) = specs
    return spec


def test_spaces_never_search_warps_or_stages():
    for space in spaces.SPACES.values():
        assert not set(space.params) & set(spaces.FORBIDDEN_PARAMS)
    with pytest.raises(ValueError, match="num_warps"):
        spaces.SearchSpace("k", {"BLOCK": (1, 2), "num_warps": (4, 8)})
    generic = spaces.candidates("unknown_kernel", {"BLOCK_N": 64, "num_stages": 2, "EVEN": True})
    assert generic[0] == {"BLOCK_N": 64, "multibuffer": True}  # the default first
    assert {c["BLOCK_N"] for c in generic} == {16, 32, 64, 128, 256}
    assert all(set(c) == {"BLOCK_N", "multibuffer"} for c in generic)
    big = spaces.candidates("moe_gemm_down", {"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 128})
    assert len(big) <= spaces.MAX_CANDIDATES + 1


def test_cost_model_rewards_fewer_tile_iterations_and_overlap():
    b3 = get_sku(SKU)
    spec = _rope_launch()
    base = cost_model.estimate_spec(spec, b3)
    assert 0 < base.share_of_roofline <= 1
    assert base.hbm_bytes == 64 * (40 * 128 * 2 * 2 + 128 * 4 + 8)  # q/k read+written, cos/sin, positions
    small = cost_model.estimate_spec(
        type(spec)(**{**spec.__dict__, "constexprs": {**spec.constexprs, "BLOCK_H": 1}}), b3
    )
    assert small.serial_s > base.serial_s and small.seconds > base.seconds
    single = cost_model.estimate_spec(type(spec)(**{**spec.__dict__, "options": {"multibuffer": False}}), b3)
    assert single.seconds > base.seconds  # no overlap of DMA and compute
    slow_hbm = cost_model.estimate_spec(spec, get_sku("Ascend910B4"))  # half the HBM bandwidth
    assert slow_hbm.memory_s == pytest.approx(2 * base.memory_s)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "a" / "b.json"
    tuner.atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        tuner.atomic_write_json(path, {"v": object()})  # not serializable: fails mid-write
    assert json.loads(path.read_text()) == {"v": 1}
    with pytest.raises(ValueError):
        tuner.atomic_write_json(path, {"v": float("nan")})  # strict JSON
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(path.parent) == ["b.json"]  # no temporary file left behind


def test_measured_is_refused_without_a_device(tmp_path, capsys):
    assert not tuner.measurement_available(SKU)
    rc = main(["tune", "--sku", SKU, "--kernel", "rope", "--method", "measured", "--out", str(tmp_path)])
    assert rc == 2
    assert "measured" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.json"))
    with pytest.raises(tuner.MeasurementUnavailableError):
        tuner.tune_sku(SKU, [], tmp_path, method="measured")


def test_tuned_file_changes_the_launch(tmp_path, monkeypatch, capsys):
    """`vat tune --sku Ascend910B3 --kernel rope` writes files that the runtime then uses.

    The model is replaced by one that prefers BLOCK_H=8 (rope's default fills the UB budget, which
    the real model also prefers), so the file must differ from the default to show the change."""
    default = _rope_launch().config["BLOCK_H"]
    assert default == 32

    class Prefer8:
        def __init__(self, seconds):
            self.seconds = seconds

    def fake_estimate(specs, sku):
        return Prefer8(sum(abs(s.constexprs.get("BLOCK_H", 8) - 8) + 1 for s in specs) * 1e-6)

    monkeypatch.setattr(cost_model, "estimate_specs", fake_estimate)
    out = tmp_path / "tuned"
    rc = main(
        ["tune", "--sku", SKU, "--kernel", "rope", "--no-shapes", "--out", str(out), "--quiet", "--json"]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    files = summary["skus"][0]["files"]
    assert files and all("/Ascend910B3/rope/" in f for f in files)
    doc = json.loads(open(out / SKU / "rope" / "head_size=128,num_heads=32,rot_dim=128.json").read())
    assert doc["method"] == "model" and doc["sku"] == SKU and doc["triton_ascend"] and doc["date"]
    # The winner's multibuffer is written: the launch passes it to the compiler.
    assert doc["configs"][0]["config"] == {"BLOCK_H": 8, "multibuffer": True}

    monkeypatch.setenv(configs.TUNED_CONFIG_FOLDER_ENV, str(out))
    configs.clear_caches()
    assert _rope_launch().config["BLOCK_H"] == 8
    assert _rope_launch().constexprs["BLOCK_H"] == 8
    # Edit the file: the runtime follows it (after the in-memory tables are cleared).
    doc["configs"][0]["config"] = {"BLOCK_H": 2, "multibuffer": False}
    tuner.atomic_write_json(out / SKU / "rope" / "head_size=128,num_heads=32,rot_dim=128.json", doc)
    configs.clear_caches()
    assert _rope_launch().constexprs["BLOCK_H"] == 2
    assert dict(_rope_launch().options) == {"multibuffer": False}  # what the NPU compile gets
    # Another SKU has no file there: its default.
    assert _rope_launch("Ascend910_9392").constexprs["BLOCK_H"] == default


def test_interrupted_run_resumes(tmp_path):
    cases = [c for c in tuner.tune_cases(("rope",), None) if "mrope" not in c.label][:4]
    calls = []

    def interrupt_after_two(p):
        calls.append(p)
        if p.phase == "lower" and p.done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tuner.tune_sku(SKU, cases, tmp_path, kernels=["rope"], on_progress=interrupt_after_two)
    journal = tmp_path / SKU / tuner.JOURNAL_NAME
    assert len(journal.read_text().splitlines()) == 2
    assert not list((tmp_path / SKU).rglob("*.json"))  # nothing half-written

    ranked = []
    original = tuner.rank_candidates

    def counting(sku, item):
        ranked.append(item.key)
        return original(sku, item)

    tuner.rank_candidates = counting
    try:
        resumed = tuner.tune_sku(SKU, cases, tmp_path, kernels=["rope"], resume=True)
    finally:
        tuner.rank_candidates = original
    assert resumed["resumed"] == 2
    assert len(ranked) == resumed["items"] - 2  # the finished items were not tuned again
    assert not journal.exists()
    fresh = tuner.tune_sku(SKU, cases, tmp_path / "fresh", kernels=["rope"])
    by_key = lambda s: sorted((json.dumps(r["key"]), json.dumps(r["config"])) for r in s["results"])  # noqa: E731
    assert by_key(resumed) == by_key(fresh)


def test_tune_and_bench_have_help_and_json():
    from vllm_ascend_triton.cli import build_parser

    parser = build_parser()
    for command in ("tune", "bench"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert parser.parse_args([command, "--json"]).json is True
