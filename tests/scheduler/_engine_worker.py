"""Child process of test_sched_engine.py: runs vLLM's real engine (in-process engine core) on a
tiny dummy-weight Llama with a given scheduler class and prints the greedy tokens as JSON."""

import json
import sys

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    from vllm_ascend_triton.scheduler.sim.vllm_setup import tiny_model_dir

    scheduler_cls = sys.argv[1]
    kwargs = {"scheduler_cls": scheduler_cls} if scheduler_cls != "vllm" else {}
    llm = LLM(
        model=tiny_model_dir(),
        load_format="dummy",
        skip_tokenizer_init=True,
        enforce_eager=True,
        gpu_memory_utilization=0.2,  # on CPU: the share of RAM for the KV cache
        max_model_len=512,
        max_num_seqs=4,
        max_num_batched_tokens=64,  # forces chunked prefill and queueing with 6 prompts
        seed=0,
        **kwargs,
    )
    prompts = [{"prompt_token_ids": list(range(10 + i, 50 + 18 * i))} for i in range(6)]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, detokenize=False))
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler  # in-process engine core
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "scheduler": type(scheduler).__name__,
        "balance_enabled": getattr(scheduler, "balance_enabled", None),
    }
    print("RESULT " + json.dumps(result), flush=True)
