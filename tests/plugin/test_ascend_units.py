"""Our opt-in integration beside vllm-ascend (``plugin/ascend.py``), checked without an engine:
the switch, platform detection by class, ``vat info``'s plan, and, in child processes that see
the stand-in ``vllm_ascend`` (``tests/ascend_standin``), what our general plugin changes in vLLM
with ``VAT_ASCEND`` off (nothing) and on (our platform subclass; our ops after vllm-ascend's)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.ascend_standin._install import install_standin, standin_env
from vllm_ascend_triton.plugin import ascend, register


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return install_standin(tmp_path_factory.mktemp("standin"))


def _child(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-6000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_switch_is_off_by_default_and_parsed_by_the_one_parser():
    assert ascend.opted_in({}) is False
    assert ascend.opted_in({"VAT_ASCEND": "1"}) is True
    assert ascend.opted_in({"VAT_ASCEND": "off"}) is False
    with pytest.raises(ValueError, match="VAT_ASCEND"):
        ascend.opted_in({"VAT_ASCEND": "maybe"})


def test_vllm_ascend_platform_is_found_by_class_not_by_device():
    npu = type("NPUPlatform", (), {"__module__": "vllm_ascend.platform", "device_type": "cpu"})
    sub = type("Sub", (npu,), {"__module__": "elsewhere"})
    other = type("NPUPlatform", (), {"__module__": "some_vendor.platform", "device_type": "npu"})
    assert ascend.is_vllm_ascend_platform(npu) and ascend.is_vllm_ascend_platform(sub())
    assert not ascend.is_vllm_ascend_platform(other)
    with pytest.raises(TypeError, match="NPUPlatform"):
        ascend.platform_class(other)


def test_integration_plan_says_what_would_run_and_why(monkeypatch):
    monkeypatch.setattr(ascend, "vllm_ascend_installed", lambda: False)
    plan = ascend.integration_plan({"VAT_ASCEND": "1"})
    assert not plan["vllm_ascend_installed"] and not any(p["active"] for p in plan["parts"].values())
    monkeypatch.setattr(ascend, "vllm_ascend_installed", lambda: True)
    off = ascend.integration_plan({})
    assert not any(p["active"] for p in off["parts"].values())
    assert "VAT_ASCEND is off" in off["parts"]["attention"]["why"]
    on = ascend.integration_plan({"VAT_ASCEND": "1", "VAT_PLUGIN_MOE": "0"})
    assert on["opted_in"] and on["parts"]["attention"]["active"] and on["parts"]["rope"]["active"]
    assert on["parts"]["moe"] == {"active": False, "why": "VAT_PLUGIN_MOE=0"}
    with pytest.raises(ValueError, match="VAT_PLUGIN_ROPE"):
        ascend.integration_plan({"VAT_ASCEND": "1", "VAT_PLUGIN_ROPE": "sometimes"})


def test_interpreter_platform_is_refused_beside_vllm_ascend(monkeypatch, caplog):
    monkeypatch.setenv("VAT_PLATFORM", "interpreter")
    monkeypatch.setattr(ascend, "vllm_ascend_installed", lambda: True)
    with caplog.at_level("ERROR", logger="vllm"):
        assert register.interpreter_platform() is None
    assert "VAT_PLATFORM=interpreter ignored" in caplog.text and "VAT_ASCEND=1" in caplog.text


def test_kv_pair_takes_vllm_ascend_layouts():
    k, v = torch.randn(3, 16, 2, 8), torch.randn(3, 16, 2, 8)
    assert ascend.kv_pair((k, v), 8)[1] is v
    packed = torch.stack([k, v])
    got_k, got_v = ascend.kv_pair(packed, 8)
    assert torch.equal(got_v, v) and got_k.data_ptr() == packed.data_ptr()
    vllm_packed = torch.cat([k, v], dim=-1).transpose(1, 2)  # vLLM's [blocks, heads, block, 2 * head]
    got_k, got_v = ascend.kv_pair(vllm_packed, 8)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)
    with pytest.raises(ValueError, match="kv_cache"):
        ascend.kv_pair(torch.zeros(3, 2, 16, 12), 8)


_STATE = """
import json
import vllm
import vllm.envs as envs
from vllm.config.scheduler import SchedulerConfig
from vllm.model_executor.custom_op import op_registry_oot
from vllm.platforms import current_platform
from vllm.plugins import load_general_plugins
from vllm.v1.attention.backends.registry import AttentionBackendEnum

def state():
    return {
        "platform": type(current_platform).__module__ + "." + type(current_platform).__qualname__,
        "registry": {k: v.__module__ + "." + v.__qualname__ for k, v in op_registry_oot.items()},
        "env_vars": sorted(envs.environment_variables),
        "backends": sorted(AttentionBackendEnum._member_map_),
        "get_scheduler_cls": SchedulerConfig.get_scheduler_cls.__module__,
    }
"""


@pytest.mark.slow  # child processes importing vLLM (~30 s each)
def test_off_path_changes_nothing_in_vllm(standin):
    code = (
        _STATE
        + """
before = state()
load_general_plugins()
from vllm_ascend_triton.plugin import register
print("RESULT " + json.dumps({"before": before, "after": state(), "registered": register.registered(),
                              "done": register._done}))
"""
    )
    got = _child(code, standin_env(standin))
    assert got["done"], "our general plugin did not run"
    assert got["before"]["platform"] == "vllm_ascend.platform.NPUPlatform"
    assert got["after"] == got["before"]
    assert got["registered"] == {}


@pytest.mark.slow  # child processes importing vLLM (~30 s each)
def test_opt_in_platform_subclass_and_ops_after_vllm_ascend(standin):
    code = (
        _STATE
        + """
import torch
load_general_plugins()
from types import SimpleNamespace
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm.v1.attention.selector import AttentionSelectorConfig
from vllm_ascend import standin_counts
from vllm_ascend.ops.rotary_embedding import AscendRotaryEmbedding
from vllm_ascend.utils import register_ascend_customop
from vllm_ascend.worker.worker import NPUWorker
from vllm_ascend_triton.plugin import ascend, counters

out = {"state": state()}
ok = AttentionSelectorConfig(head_size=64, dtype=torch.float32, kv_cache_dtype="auto", block_size=None)
out["attn_ok"] = current_platform.get_attn_backend_cls(None, ok)
out["attn_fp8"] = current_platform.get_attn_backend_cls(None, ok._replace(kv_cache_dtype="fp8"))
out["attn_big_head"] = current_platform.get_attn_backend_cls(None, ok._replace(head_size=512))
cfg = SimpleNamespace(
    model_config=object(), additional_config=None,
    parallel_config=SimpleNamespace(worker_cls="vllm_ascend.worker.worker.NPUWorker"),
    compilation_config=SimpleNamespace(custom_ops=["all"]),
    scheduler_config=SimpleNamespace(scheduler_cls=None),
)
ascend.update_config(cfg)
out["worker_cls"] = cfg.parallel_config.worker_cls
out["worker_is_theirs"] = issubclass(ascend.worker_class(), NPUWorker)
module, _, name = cfg.parallel_config.worker_cls.rpartition(".")
import importlib
out["worker_resolves"] = getattr(importlib.import_module(module), name) is ascend.worker_class()
register_ascend_customop()  # what NPUWorker.__init__ does, then ours
from vllm_ascend.utils import REGISTERED_ASCEND_OPS
out["standin_names"] = sorted(REGISTERED_ASCEND_OPS)
first = ascend.install_ops()
second = ascend.install_ops()
out["installed"] = first
out["idempotent"] = first == second
out["registry"] = {k: v.__module__ + "." + v.__qualname__ for k, v in op_registry_oot.items()}
with set_current_vllm_config(VllmConfig()):
    rope = RotaryEmbedding(32, 16, 64, 10000.0, True, torch.float32)
out["rope_is_theirs_too"] = isinstance(rope, AscendRotaryEmbedding)
positions = torch.tensor([0, 3, 7, 20])
q, k = torch.randn(4, 3 * 32), torch.randn(4, 32)
want = rope.forward_native(positions, q.clone(), k.clone())
before = counters.snapshot().get("rotary_embedding", 0)
got = rope.forward_cpu(positions, q.clone(), k.clone())
out["rope_close"] = all(torch.allclose(g, w.reshape(g.shape), atol=1e-5) for g, w in zip(got, want))
out["rope_counted"] = counters.snapshot().get("rotary_embedding", 0) - before
out["standin_rope_calls"] = standin_counts.counts.get("rope", 0)
print("RESULT " + json.dumps(out))
"""
    )
    got = _child(code, standin_env(standin, VAT_ASCEND="1", TRITON_INTERPRET="1", VAT_BACKEND="interpreter"))
    assert got["state"]["platform"] == "vllm_ascend_triton.plugin.ascend.VatAscendPlatform"
    assert "VAT_TRITON_ATTN" in got["state"]["backends"]
    assert got["attn_ok"] == ascend.ATTENTION_BACKEND_CLS
    # Layers our backend does not take keep vllm-ascend's fixed table.
    assert (
        got["attn_fp8"] == got["attn_big_head"] == "vllm_ascend.attention.attention_v1.AscendAttentionBackend"
    )
    assert got["worker_cls"] == ascend.our_worker_cls("vllm_ascend.worker.worker.NPUWorker")
    assert got["worker_is_theirs"] and got["worker_resolves"]
    assert got["idempotent"] and "RoutedExperts" in got["installed"]["moe"]
    # The stand-in registers a subset of what vllm-ascend 182b75e registers.
    assert set(got["standin_names"]) <= ascend.ASCEND_REGISTERED
    registry = got["registry"]
    assert registry["RotaryEmbedding"] == "vllm_ascend_triton.plugin.ascend.VatAscendRotaryEmbedding"
    for name, theirs in (
        ("DeepseekScalingRotaryEmbedding", "AscendDeepseekScalingRotaryEmbedding"),
        ("MRotaryEmbedding", "AscendMRotaryEmbedding"),
        ("YaRNScalingRotaryEmbedding", "AscendYaRNRotaryEmbedding"),
    ):  # ours over the stand-in's class, as over vllm-ascend's
        assert registry[name] == f"vllm_ascend_triton.plugin.ascend.Vat{theirs}", name
    assert "not_installed" not in got["installed"], got["installed"]
    assert registry["RoutedExperts"] == "vllm_ascend_triton.plugin.ascend.VatAscendRoutedExperts"
    assert registry["MoERunner"] == "vllm_ascend.ops.fused_moe.fused_moe.AscendMoERunner"  # not ours
    assert got["rope_is_theirs_too"] and got["rope_close"]
    assert got["rope_counted"] == 1 and got["standin_rope_calls"] == 0


def test_update_config_wraps_the_chosen_worker_and_keeps_a_chosen_scheduler(monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_BALANCE_SCHEDULING", "1")
    cfg = SimpleNamespace(
        model_config=object(),
        additional_config=None,
        parallel_config=SimpleNamespace(worker_cls="vllm_ascend.xlite.xlite_worker.XliteWorker"),
        compilation_config=SimpleNamespace(custom_ops=["none"]),
        scheduler_config=SimpleNamespace(scheduler_cls=None),
    )
    ascend.update_config(cfg)
    # Another worker class vllm-ascend chose is wrapped the same way (our ops after its __init__).
    assert cfg.parallel_config.worker_cls == ascend.our_worker_cls(
        "vllm_ascend.xlite.xlite_worker.XliteWorker"
    )
    ascend.update_config(cfg)  # idempotent
    assert cfg.parallel_config.worker_cls == ascend.our_worker_cls(
        "vllm_ascend.xlite.xlite_worker.XliteWorker"
    )
    assert "+RotaryEmbedding" in cfg.compilation_config.custom_ops
    assert cfg.scheduler_config.scheduler_cls == register.BALANCE_SCHEDULER_CLS
    theirs = SimpleNamespace(
        **{**vars(cfg), "scheduler_config": SimpleNamespace(scheduler_cls="vllm_ascend.core.X")}
    )
    ascend.update_config(theirs)
    assert theirs.scheduler_config.scheduler_cls == "vllm_ascend.core.X"


def test_vat_info_beside_vllm_ascend(standin):
    vat = [sys.executable, "-c", "import sys; from vllm_ascend_triton.cli import main; sys.exit(main())"]
    off = subprocess.run([*vat, "info", "--json"], env=standin_env(standin), capture_output=True, text=True)
    assert off.returncode == 0, off.stderr
    plan = json.loads(off.stdout)["vllm"]
    assert plan["vllm_ascend_installed"] and not plan["opted_in"]
    assert not any(p["active"] for p in plan["parts"].values())
    on = subprocess.run(
        [*vat, "info"], env=standin_env(standin, VAT_ASCEND="1", VAT_PLUGIN_SCHEDULER="0"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert on.returncode == 0, on.stderr
    assert "vllm-ascend installed, VAT_ASCEND on" in on.stdout
    assert (
        "attention    : active" in on.stdout
        and "scheduler    : inactive (VAT_PLUGIN_SCHEDULER=0)" in on.stdout
    )
