"""In-process probe of an engine run beside the stand-in ``vllm_ascend`` (the engine core and
worker in the run's process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the out-of-tree op registry,
each attention layer's backend, each MoE layer's method and classes, the scheduler and worker
classes, the platform class, the compile settings, and the call counts of the stand-in's ops and
of ours. ``tests/plugin/_engine_worker.py`` calls it after a run (``"probe"`` in the run's spec)."""


def _name(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def probe(llm, our_counts: dict[str, int]) -> dict:
    """What vLLM ended up with in this process after one run; ``our_counts``: our calls during
    the run (the stand-in's counts are taken and cleared here, so each run reports its own)."""
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

    from vllm_ascend_triton.plugin import register

    plugin = {"ran": register._done, "registered": register.registered()}
    standin = dict(standin_counts.counts)
    standin_counts.counts.clear()
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
        "standin_counts": standin,
        "our_counts": our_counts,
        "our_plugin": plugin,
    }
