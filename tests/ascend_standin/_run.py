"""Child process: one offline vLLM run of a local model beside the stand-in ``vllm_ascend``;
prints ``RESULT <json>`` with the greedy tokens and logprobs and, with ``--probe`` (needs
``VLLM_ENABLE_V1_MULTIPROCESSING=0``: engine core and worker in this process), what vLLM ended
up with: the out-of-tree op registry, each attention layer's backend, each MoE layer's method and
classes, the scheduler and worker classes, the platform class, the compile settings, and the
call counters of the stand-in's ops and of ours.

usage: _run.py MODEL_DIR [--compile] [--probe]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.plugin._models import MAX_TOKENS, PROMPTS  # noqa: E402


def _name(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def probe(llm) -> dict:
    import vllm.envs as envs
    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.platforms import current_platform

    config = llm.llm_engine.vllm_config
    worker = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
    model = worker.model_runner.model
    attention = {}
    for name, layer in config.compilation_config.static_forward_context.items():
        backend = getattr(layer, "attn_backend", None)
        if backend is not None:
            attention[name] = _name(backend)
    moe = {}
    for name, module in model.named_modules():
        if hasattr(module, "quant_method") and hasattr(module, "w13_weight"):
            moe[name] = {"layer": _name(module), "method": _name(module.quant_method)}
    rope = sorted({_name(m) for m in model.modules() if "Rotary" in type(m).__name__})
    from vllm_ascend import standin_counts

    try:
        from vllm_ascend_triton.plugin import counters, register

        ours = counters.snapshot()
        plugin = {"ran": register._done, "registered": register.registered()}
    except ImportError:
        ours, plugin = {}, None
    return {
        "op_registry_oot": {k: _name(v) for k, v in sorted(op_registry_oot.items())},
        "attention_backends": attention,
        "moe_layers": moe,
        "rope_classes": rope,
        "scheduler_cls": str(config.scheduler_config.scheduler_cls),
        "worker_cls": str(config.parallel_config.worker_cls),
        "platform": _name(current_platform),
        "custom_ops": list(config.compilation_config.custom_ops),
        "compilation_mode": str(config.compilation_config.mode),
        "balance_env_known": "VLLM_ASCEND_BALANCE_SCHEDULING" in envs.environment_variables,
        "standin_counts": dict(standin_counts.counts),
        "our_counts": ours,
        "our_plugin": plugin,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--compile", action="store_true", help="vLLM's compile mode (not enforce_eager)")
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    start = time.monotonic()
    llm = LLM(
        model=args.model,
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=not args.compile,
        max_model_len=128,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        kv_cache_memory_bytes=64 * 1024**2,
        seed=0,
    )
    ready = time.monotonic()
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    done = time.monotonic()
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "logprobs": [
            [{str(t): lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs] for o in outs
        ],
        "startup_s": round(ready - start, 1),
        "generate_s": round(done - ready, 1),
    }
    if args.probe:
        result["probe"] = probe(llm)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
