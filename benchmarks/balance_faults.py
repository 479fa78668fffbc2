"""Faults and hangs of balance mode at DP=2 in the real engine (measured on this host).

Each case starts the OpenAI API server at DP=2 on loopback with ``BalanceScheduler`` (the balance
switch on), a tiny MoE model with dummy weights and a byte-level BPE tokenizer built here (so
JSON can be expressed and structured output runs), vLLM's CPU ops (our op switches off; the
interpreter platform only for its gloo communicator):

- ``structured``: JSON-schema requests mixed with plain ones, concurrently: all complete, and
  every structured answer parses and has the schema's keys;
- ``disconnect``: streamed requests of which a fifth are dropped by the client mid-stream;
  afterwards the server's ``/metrics`` say 0 running, 0 waiting and KV cache usage 0;
- ``kill``: one engine-core process (DP rank 1) is SIGKILLed under load: the server must exit
  with an error naming the dead engine within a bound, and every process of its group be gone
  within 60 s of that exit;
- ``soak``: mixed lengths for ``--minutes`` (10 for the recorded run): every request completes,
  0 errors, and each engine core's RSS at the end stays within a stated bound of its RSS after
  the warm-up.

``tests/scheduler/test_sched_faults.py`` runs the first three (slow); the soak is too long for CI
and is recorded in docs/results/ (see docs/scheduler.md, "Faults").

Commands::

    python benchmarks/balance_faults.py structured|disconnect|kill --out DIR
    python benchmarks/balance_faults.py soak --minutes 10 --out DIR
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_ab import Server  # noqa: E402  (the sibling benchmark's server wrapper)

WORDS = ["the", "cat", "sat", "on", "mat", "name", "age", "value", "city", "blue", "green", "data"]
MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["Glm4MoeForCausalLM"],
    "model_type": "glm4_moe",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "partial_rotary_factor": 0.5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "use_qk_norm": False,
    "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "dtype": "float32",
}
FAULT_SERVER_ARGS = [
    "--data-parallel-size", "2", "--load-format", "dummy", "--dtype", "float32", "--enforce-eager",
    "--seed", "0",
    "--max-model-len", "1024", "--max-num-batched-tokens", "256", "--max-num-seqs", "8",
    "--kv-cache-memory-bytes", str(64 << 20),
    # Bounded JSON: dummy weights write whatever the grammar allows, and with free whitespace
    # that is newlines up to max_tokens. vLLM reads this flag per server, not per request.
    "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
]  # fmt: skip
# Bounded on purpose (see FAULT_SERVER_ARGS): every field has a finite form.
SCHEMA = {
    "type": "object",
    "properties": {"name": {"enum": ["cat", "dog", "data"]}, "age": {"enum": [1, 2, 3]}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def write_model(model_dir: Path) -> Path:
    """config.json plus a byte-level BPE tokenizer trained here on a few words and JSON marks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(MODEL_CONFIG, indent=2))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    rng = random.Random(0)
    marks = ["{", "}", '"', ":", ",", "0", "1", "2", "3", "42"]
    corpus = [" ".join(rng.choice(WORDS + marks) for _ in range(60)) for _ in range(300)]
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "model_max_length": 2048,
            }
        )  # fmt: skip
    )
    return model_dir


def start(out: Path, name: str) -> Server:
    model = write_model(out / "model")
    # vLLM's stats stay on (no --disable-log-stats): /metrics must be live for the checks.
    # Stats every 2 s (vLLM's default is 10): the short cases still log the plan's interval
    # lines, with the ranks' step-time fit, which the tests read.
    server = Server(model, "balance", out / f"server_{name}.log", base_args=FAULT_SERVER_ARGS,
                    env={"VLLM_LOG_STATS_INTERVAL": "2"})  # fmt: skip
    server.wait_ready()
    return server


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _post(server: Server, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def case_structured(server: Server, n: int = 12, seed: int = 0) -> dict[str, Any]:
    """Half JSON-schema, half plain completions, all in flight together."""
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        body: dict[str, Any] = {"model": server.model, "prompt": _text(rng, rng.randint(8, 200)),
                                "max_tokens": rng.randint(8, 48), "temperature": 0.0}  # fmt: skip
        if i % 2 == 0:
            body["structured_outputs"] = {"json": SCHEMA}
            body["max_tokens"] = 64
        else:
            body["ignore_eos"] = True
        bodies.append(body)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda b: _post(server, b), bodies))
    parsed, bad = 0, []
    for body, res in zip(bodies, results, strict=True):
        text = res["choices"][0]["text"]
        if "structured_outputs" in body:
            try:
                obj = json.loads(text)
                if set(obj) == {"name", "age"} and isinstance(obj["age"], int):
                    parsed += 1
                    continue
            except json.JSONDecodeError:
                pass
            bad.append(text[:200])
    return {"requests": n, "completed": len(results), "structured": (n + 1) // 2,
            "structured_valid": parsed, "invalid_samples": bad[:3]}  # fmt: skip


def _stream(server: Server, body: dict[str, Any], drop_after: int | None) -> int:
    """Stream a completion; close the connection after ``drop_after`` chunks. Returns chunks read."""
    data = json.dumps({**body, "stream": True}).encode()
    req = urllib.request.Request(
        server.url + "/v1/completions", data=data, headers={"Content-Type": "application/json"}
    )
    chunks = 0
    r = urllib.request.urlopen(req, timeout=300)
    try:
        for line in r:
            if line.startswith(b"data: ") and b"[DONE]" not in line:
                chunks += 1
                if drop_after is not None and chunks >= drop_after:
                    break
    finally:
        r.close()
    return chunks


def wait_idle(server: Server, timeout: float = 60.0) -> dict[str, float]:
    """Poll /metrics until nothing runs, nothing waits and the KV cache is empty (or timeout)."""
    deadline = time.monotonic() + timeout
    keys = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    while True:
        m = server.metrics()
        got = {k: m.get(k, float("nan")) for k in keys}
        if all(v == 0 for v in got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(1.0)


def case_disconnect(server: Server, n: int = 20, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        body = {"model": server.model, "prompt": _text(rng, rng.randint(16, 300)), "max_tokens": 96,
                "ignore_eos": True, "temperature": 0.0}  # fmt: skip
        jobs.append((body, rng.randint(2, 20) if i % 5 == 0 else None))
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        chunks = list(pool.map(lambda j: _stream(server, *j), jobs))
    dropped = sum(d is not None for _, d in jobs)
    full = [c for c, (_, d) in zip(chunks, jobs, strict=True) if d is None]
    after = wait_idle(server)
    return {"requests": n, "dropped_mid_stream": dropped, "completed_full": sum(c == 96 for c in full),
            "expected_full": len(full), "metrics_after": after}  # fmt: skip


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


def case_kill(server: Server, seed: int = 2) -> dict[str, Any]:
    """SIGKILL DP rank 1's engine core under load; time the server's exit, list survivors."""
    import re
    import signal

    log = server.log()
    found = re.findall(r"\(EngineCore_DP1 pid=(\d+)\)", log)
    if not found:
        raise RuntimeError("no EngineCore_DP1 pid in the server log")
    victim = int(found[-1])
    pgid = server.proc.pid
    before = _group_pids(pgid)
    rng = random.Random(seed)
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            body = {"model": server.model, "prompt": _text(rng, rng.randint(16, 300)), "max_tokens": 64,
                    "ignore_eos": True}  # fmt: skip
            try:
                _post(server, body, timeout=120)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                errors.append(type(exc).__name__ + ": " + str(exc)[:200])
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(8.0)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    exit_s = None
    while time.monotonic() - t_kill < 180:
        if server.proc.poll() is not None:
            exit_s = time.monotonic() - t_kill
            break
        time.sleep(0.2)
    stop.set()
    # vLLM's children (workers, the coordinator, multiprocessing's resource tracker) take a few
    # seconds to go after the API server exits: wait for the group to empty, at most 60 s.
    t_exit = time.monotonic()
    survivors = [p for p in _group_pids(pgid) if p != os.getpid()]
    while survivors and time.monotonic() - t_exit < 60.0:
        time.sleep(0.5)
        survivors = [p for p in _group_pids(pgid) if p != os.getpid()]
    group_empty_s = time.monotonic() - t_exit if not survivors else None
    text = server.log()
    lines = [ln for ln in text.splitlines() if "EngineDeadError" in ln or "died unexpectedly" in ln
             or "Engine core" in ln and "died" in ln or "exchange" in ln and "Error" in ln]  # fmt: skip
    return {"killed_pid": victim, "processes_before": len(before), "server_exit_s": exit_s,
            "server_returncode": server.proc.returncode, "survivors": survivors,
            "group_empty_after_exit_s": group_empty_s,
            "client_errors": len(errors), "error_lines": lines[:6]}  # fmt: skip


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def case_soak(server: Server, minutes: float, seed: int = 3, clients: int = 6) -> dict[str, Any]:
    import re

    pids = sorted({int(p) for p in re.findall(r"\(EngineCore_DP\d pid=(\d+)\)", server.log())})
    rng = random.Random(seed)
    lock = threading.Lock()
    stats = {"ok": 0, "errors": 0, "short": 0, "samples": []}
    stop = threading.Event()

    def client(k: int) -> None:
        r = random.Random(seed * 100 + k)
        while not stop.is_set():
            n_out = r.choice([4, 16, 64, 160])
            prompt = _text(r, r.choice([8, 64, 256, 600]))
            body = {"model": server.model, "prompt": prompt, "max_tokens": n_out, "ignore_eos": True}
            try:
                res = _post(server, body, timeout=300)
                got = res["usage"]["completion_tokens"]
                with lock:
                    stats["ok"] += 1
                    stats["short"] += got != n_out
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with lock:
                    stats["errors"] += 1
                    stats["samples"].append(type(exc).__name__ + ": " + str(exc)[:200])

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    rss: list[dict[str, Any]] = []
    while time.monotonic() - t0 < minutes * 60:
        time.sleep(min(30.0, max(1.0, minutes * 60 - (time.monotonic() - t0))))
        rss.append({"t_s": round(time.monotonic() - t0), **{str(p): _rss_kib(p) for p in pids}})
    stop.set()
    for t in threads:
        t.join(timeout=320)
    del rng
    idle = wait_idle(server)
    # Bound: after the first minute (allocator and caches warm), no engine core grows by more
    # than 10% or 64 MiB, whichever is larger.
    base = next((r for r in rss if r["t_s"] >= 60), rss[0])
    growth = {p: rss[-1][str(p)] - base[str(p)] for p in pids}
    bound = {p: max(64 * 1024, base[str(p)] // 10) for p in pids}
    return {"minutes": minutes, "clients": clients, "completed": stats["ok"], "errors": stats["errors"],
            "short_answers": stats["short"], "error_samples": stats["samples"][:3], "rss_kib": rss,
            "rss_growth_kib": growth, "rss_bound_kib": bound,
            "rss_within_bound": all(growth[p] <= bound[p] for p in pids), "metrics_after": idle}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["structured", "disconnect", "kill", "soak"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    server = start(out, args.case)
    try:
        if args.case == "structured":
            res = case_structured(server)
        elif args.case == "disconnect":
            res = case_disconnect(server)
        elif args.case == "kill":
            res = case_kill(server)
        else:
            res = case_soak(server, args.minutes)
    finally:
        server.stop()
    res = {"case": args.case, "measured": f"this host ({os.cpu_count()} CPUs), DP=2 API server, balance on",
           "started_utc": started, "command": " ".join(sys.argv), **res}  # fmt: skip
    (out / f"{args.case}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
