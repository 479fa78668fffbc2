"""The vLLM plugin's parts, checked without starting an engine: entry points, switches, rope
replacements against vLLM's own native forwards, the attention/MoE support decisions, the
scheduler choice, and the gloo collectives (two real processes)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from vllm_ascend_triton.plugin import counters, register

F32 = torch.float32


def test_entry_points_are_installed():
    general = {e.value for e in importlib.metadata.entry_points(group="vllm.general_plugins")}
    platform = {e.value for e in importlib.metadata.entry_points(group="vllm.platform_plugins")}
    assert "vllm_ascend_triton.plugin.register:register" in general
    assert "vllm_ascend_triton.plugin.register:interpreter_platform" in platform


def test_platform_plugin_is_inactive_unless_asked(monkeypatch):
    monkeypatch.delenv("VAT_PLATFORM", raising=False)
    assert register.interpreter_platform() is None
    monkeypatch.setenv("VAT_PLATFORM", "cuda")
    assert register.interpreter_platform() is None


def test_platform_plugin_refuses_a_conflicting_backend(monkeypatch):
    monkeypatch.setenv("VAT_PLATFORM", "interpreter")
    monkeypatch.setenv("VAT_BACKEND", "npu")
    with pytest.raises(ValueError, match="VAT_BACKEND"):
        register.interpreter_platform()


def test_switches(monkeypatch):
    for part, env in register.SWITCHES.items():
        monkeypatch.delenv(env, raising=False)
        assert register.part_enabled(part)
        monkeypatch.setenv(env, "0")
        assert not register.part_enabled(part)
        monkeypatch.setenv(env, "maybe")
        with pytest.raises(ValueError, match=env):
            register.part_enabled(part)
    with pytest.raises(ValueError, match="unknown plugin part"):
        register.part_enabled("norm")


def _sched_config(scheduler_cls=None, extra=None):
    sched = SimpleNamespace(scheduler_cls=scheduler_cls)
    return SimpleNamespace(scheduler_config=sched, additional_config=extra)


def test_balance_scheduler_chosen_only_when_switched_on_and_unset(monkeypatch, caplog):
    monkeypatch.delenv("VAT_PLUGIN_SCHEDULER", raising=False)
    monkeypatch.delenv(register.BALANCE_ENV, raising=False)
    cfg = _sched_config()
    assert register.choose_scheduler(cfg) is None and cfg.scheduler_config.scheduler_cls is None

    monkeypatch.setenv(register.BALANCE_ENV, "1")
    cfg = _sched_config()
    assert register.choose_scheduler(cfg) == register.BALANCE_SCHEDULER_CLS
    assert cfg.scheduler_config.scheduler_cls == register.BALANCE_SCHEDULER_CLS

    user = _sched_config("my.pkg.MyScheduler")
    with caplog.at_level("INFO", logger="vllm"):
        assert register.choose_scheduler(user) is None
    assert user.scheduler_config.scheduler_cls == "my.pkg.MyScheduler"
    assert "keeping the user's scheduler class my.pkg.MyScheduler" in caplog.text

    caplog.clear()
    ours = _sched_config(register.BALANCE_SCHEDULER_CLS)  # a re-check of a config we set
    with caplog.at_level("INFO", logger="vllm"):
        assert register.choose_scheduler(ours) == register.BALANCE_SCHEDULER_CLS
    assert "keeping" not in caplog.text

    monkeypatch.setenv("VAT_PLUGIN_SCHEDULER", "0")
    cfg = _sched_config()
    assert register.choose_scheduler(cfg) is None and cfg.scheduler_config.scheduler_cls is None

    # additional_config wins over the environment.
    monkeypatch.delenv("VAT_PLUGIN_SCHEDULER")
    cfg = _sched_config(extra={"balance_scheduling": False})
    assert register.choose_scheduler(cfg) is None


def test_attention_support_decision():
    from vllm.v1.attention.selector import AttentionSelectorConfig

    from vllm_ascend_triton.plugin.attention_backend import unsupported_reason

    ok = AttentionSelectorConfig(head_size=128, dtype=torch.float16, kv_cache_dtype="auto", block_size=None)
    assert unsupported_reason(ok) is None
    assert unsupported_reason(ok._replace(has_sink=True, has_sliding_window=True)) is None
    assert "head size 512" in unsupported_reason(ok._replace(head_size=512))
    assert "fp8" in unsupported_reason(ok._replace(kv_cache_dtype="fp8"))
    assert "dtype" in unsupported_reason(ok._replace(dtype=torch.float64))
    assert unsupported_reason(ok._replace(use_mla=True)) == "MLA"
    assert "encoder" in unsupported_reason(ok._replace(attn_type="encoder"))


def test_interpreter_platform_keeps_vllm_attention_for_unsupported_layers(caplog):
    from vllm.v1.attention.selector import AttentionSelectorConfig

    from vllm_ascend_triton.plugin.platform import InterpreterPlatform

    ok = AttentionSelectorConfig(head_size=64, dtype=torch.float16, kv_cache_dtype="auto", block_size=None)
    ours = "vllm_ascend_triton.plugin.attention_backend.VatAttentionBackend"
    assert InterpreterPlatform.get_attn_backend_cls(None, ok) == ours
    with caplog.at_level("WARNING", logger="vllm"):
        for _ in range(3):  # one log line per reason, not per layer
            path = InterpreterPlatform.get_attn_backend_cls(None, ok._replace(head_size=512))
    assert path.endswith("CPUAttentionBackend")
    assert caplog.text.count("keeps vLLM's CPU backend: head size 512") == 1
    fp8 = InterpreterPlatform.get_attn_backend_cls(None, ok._replace(kv_cache_dtype="fp8"))
    assert fp8.endswith("CPUAttentionBackend")


def test_moe_support_decision():
    from vllm_ascend_triton.plugin.moe import config_unsupported, layer_unsupported

    moe = SimpleNamespace(
        activation=SimpleNamespace(value="silu"),
        has_bias=False,
        is_lora_enabled=False,
        in_dtype=torch.bfloat16,
        moe_parallel_config=SimpleNamespace(enable_eplb=False),
    )
    assert config_unsupported(moe) is None
    assert "gelu" in config_unsupported(SimpleNamespace(**{**vars(moe), "activation": "gelu"}))
    assert config_unsupported(SimpleNamespace(**{**vars(moe), "has_bias": True})) == "expert biases"
    layer = SimpleNamespace(
        custom_routing_function=None,
        scoring_func="sigmoid",
        apply_router_weight_on_input=False,
        w13_weight=torch.zeros(1, dtype=torch.float16),
    )
    assert layer_unsupported(layer) is None
    custom = SimpleNamespace(**{**vars(layer), "custom_routing_function": max})
    assert "custom routing" in layer_unsupported(custom)
    int8 = SimpleNamespace(**{**vars(layer), "w13_weight": torch.zeros(1, dtype=torch.int8)})
    assert "int8" in layer_unsupported(int8)


ROPE_CASES = {
    "RotaryEmbedding": lambda: (32, 16, 64, 10000.0, True, F32),
    "LinearScalingRotaryEmbedding": lambda: (32, 32, 64, 10000.0, False, 2.0, F32),
    "NTKScalingRotaryEmbedding": lambda: (32, 32, 64, 10000.0, True, 2.0, F32),
    "DynamicNTKScalingRotaryEmbedding": lambda: (32, 32, 64, 32, 10000.0, True, 2.0, F32),
    "DynamicNTKAlphaRotaryEmbedding": lambda: (32, 32, 64, 10000.0, True, 1.5, F32),
    "YaRNScalingRotaryEmbedding": lambda: (32, 32, 32, 10000.0, True, 2.0, F32),
    "Llama3RotaryEmbedding": lambda: (32, 32, 64, 500000.0, True, F32, 8.0, 1.0, 4.0, 32),
    "DeepseekScalingRotaryEmbedding": lambda: (32, 16, 32, 10000.0, False, 2.0, F32),
}


@pytest.fixture(scope="module")
def vllm_config_ctx():
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):
        yield


@pytest.mark.parametrize("name", sorted(ROPE_CASES))
def test_rope_replacement_matches_vllm_native(name, vllm_config_ctx):
    from vllm_ascend_triton.plugin.ops import replacement_class

    cls = replacement_class(name)
    assert cls.__mro__[2].__name__ == name  # our mixin, then vLLM's own class
    rope = cls(*ROPE_CASES[name]())
    tokens, heads, kv_heads = 5, 3, 1
    positions = torch.tensor([0, 3, 7, 20, 31])
    q = torch.randn(tokens, heads * 32)
    k = torch.randn(tokens, kv_heads * 32)
    extra = ()
    if name == "DeepseekScalingRotaryEmbedding":
        # DeepSeek attention calls it on [T, H, D] views, with per-token offsets.
        q, k = q.view(tokens, heads, 32), k.view(tokens, kv_heads, 32)
        positions = torch.tensor([0, 1, 2, 3, 4])
        extra = (torch.tensor([0, 5, 10, 20, 27]),)  # offsets
    want_q, want_k = rope.forward_native(positions, q.clone(), k.clone(), *extra)
    before = counters.snapshot().get("rotary_embedding", 0)
    got_q, got_k = rope.forward_cpu(positions, q.clone(), k.clone(), *extra)
    assert counters.snapshot()["rotary_embedding"] == before + 1
    torch.testing.assert_close(got_q, want_q.reshape(got_q.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, want_k.reshape(got_k.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["RotaryEmbedding", "MRotaryEmbedding"])
def test_rope_replacement_compiles_fullgraph_to_the_eager_result(name, vllm_config_ctx):
    """Under Dynamo (vLLM's compile mode) the replacement's forward traces our ``vat::`` op as one
    node: no graph break (fullgraph), the same values as the eager call, and our kernel ran."""
    from vllm_ascend_triton.plugin.ops import replacement_class

    if name == "MRotaryEmbedding":
        rope = replacement_class(name)(32, 32, 16, 10000.0, True, F32, [4, 6, 6])
        positions = torch.randint(0, 16, (3, 5))
    else:
        rope = replacement_class(name)(32, 32, 32, 10000.0, True, F32)
        positions = torch.tensor([0, 3, 7, 20, 31])
    q, k = torch.randn(5, 3 * 32), torch.randn(5, 32)

    def forward(positions, q, k):
        q, k = rope.forward_cpu(positions, q, k)
        return q * 1.0, k * 1.0

    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    want = forward(positions, q.clone(), k.clone())
    before = counters.snapshot().get(f"{'mrope_' if name == 'MRotaryEmbedding' else ''}rotary_embedding", 0)
    got = compiled(positions, q.clone(), k.clone())
    after = counters.snapshot()[f"{'mrope_' if name == 'MRotaryEmbedding' else ''}rotary_embedding"]
    assert after > before
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_mrope_replacement_matches_vllm_native(vllm_config_ctx):
    from vllm_ascend_triton.plugin.ops import replacement_class

    rope = replacement_class("MRotaryEmbedding")(32, 32, 16, 10000.0, True, F32, [4, 6, 6])
    positions = torch.randint(0, 60, (3, 6))
    q, k = torch.randn(6, 2 * 32), torch.randn(6, 32)
    want = rope.forward_native(positions, q.clone(), k.clone())
    got = rope.forward_cpu(positions, q.clone(), k.clone())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_rope_unsupported_dtype_keeps_native_with_one_log(vllm_config_ctx, caplog):
    from vllm_ascend_triton.plugin.ops import replacement_class

    rope = replacement_class("RotaryEmbedding")(32, 32, 16, 10000.0, True, torch.float64)
    q, k = torch.randn(2, 32, dtype=torch.float64), torch.randn(2, 32, dtype=torch.float64)
    positions = torch.tensor([1, 2])
    with caplog.at_level("WARNING", logger="vllm"):
        for _ in range(3):
            got = rope.forward_cpu(positions, q.clone(), k.clone())
    want = rope.forward_native(positions, q.clone(), k.clone())
    torch.testing.assert_close(got[0], want[0])
    assert caplog.text.count("keeps vLLM's native rope") == 1


_GLOO_CHILD = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from vllm_ascend_triton.plugin.communicator import GlooCpuCommunicator
    rank, path = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    comm = GlooCpuCommunicator.__new__(GlooCpuCommunicator)  # the collectives only need these
    comm.world_size, comm.rank_in_group, comm.device_group = 2, rank, dist.group.WORLD
    sizes = [3, 1]
    mine = torch.arange(sizes[rank] * 2, dtype=torch.float32).reshape(-1, 2) + 100 * rank
    hidden, logits = comm.all_gatherv([mine, mine[:, :1] * -1], dim=0, sizes=sizes)
    want = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(2.0).reshape(1, 2) + 100])
    assert torch.equal(hidden, want), hidden
    assert torch.equal(logits, -want[:, :1]), logits
    full = torch.full((4, 2), float(rank + 1))
    out = comm.reduce_scatterv(full, dim=0, sizes=sizes)
    assert out.shape == (sizes[rank], 2) and torch.all(out == 3.0), out
    even = comm.reduce_scatter(torch.ones(4, 3) * (rank + 1), dim=0)
    assert even.shape == (2, 3) and torch.all(even == 3.0)
    try:
        comm.all_gatherv(mine, dim=0, sizes=[5, 5])
    except ValueError as exc:
        assert "this rank holds" in str(exc)
    else:
        raise AssertionError("bad sizes accepted")
    dist.destroy_process_group()
    print("OK", rank)
    """
)


def test_gloo_communicator_variable_size_collectives(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VAT_BACKEND")}
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GLOO_CHILD, str(rank), str(store)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for rank, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"OK {rank}" in out, err[-3000:]


def test_mutation_hook_is_read_once_and_validated(monkeypatch):
    from vllm_ascend_triton.plugin import mutate

    try:
        assert mutate.configure("") is None and not mutate.ACTIVE
        monkeypatch.setenv(mutate.MUTATE_ENV, "attention:0.5")
        assert not mutate.ACTIVE  # not re-read per call
        assert mutate.configure() == ("attention", 0.5) and mutate.ACTIVE
        t = torch.ones(3)
        mutate.apply("rope", t)
        assert torch.equal(t, torch.ones(3))
        mutate.apply("attention", t)
        assert torch.equal(t, torch.full((3,), 0.5))
        for bad in ("softmax:2", "attention:x"):
            with pytest.raises(ValueError, match=mutate.MUTATE_ENV):
                mutate.parse(bad)
    finally:
        mutate.configure("")


def test_counts_folder_is_read_once(monkeypatch, tmp_path):
    try:
        monkeypatch.delenv(counters.COUNTS_DIR_ENV, raising=False)
        assert counters.configure() is None
        monkeypatch.setenv(counters.COUNTS_DIR_ENV, str(tmp_path))
        counters.bump("test_op_once")  # the folder is not re-read per call: nothing written
        assert not list(tmp_path.iterdir())
        assert counters.configure() == str(tmp_path)
        counters.bump("test_op_once")
        counters.flush()
        (entry,) = counters.read_all(str(tmp_path))
        assert entry["counts"]["test_op_once"] == 2
    finally:
        counters.configure("")
