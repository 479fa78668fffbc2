"""Seeded, deterministic request streams for the simulator.

* ``a``: closed loop. ``2 * dp * max_num_seqs`` clients each keep one request in flight
  (twice what the ranks can run), prompts 3500 and outputs 1500 tokens with uniform
  +-10% jitter: the shape of vllm-ascend's balance-scheduling benchmark. A client sends
  its next request the moment the previous one finishes.
* ``b``: open loop, Poisson arrivals (4.5/s per rank: more than default and gate sustain under the
  default step model, less than balance does) of mixed ShareGPT-like lengths: 75% chat turns
  (log-normal prompt, median 256, and output, median 192) and 25% long-context turns
  (prompt median 2048, output median 256), capped at 8192 / 2048 tokens.
* ``c``: bursts. A Poisson background of chat turns (1.5/s per rank) plus, every 20 s,
  a burst of 4 long prompts per hot rank (6K-8K tokens, 128-384 output) pinned to the first
  quarter of the ranks (as a prefix-cache- or session-affine router would send one
  tenant's documents), so load is skewed onto some ranks.
* ``burst``: a Poisson background of chat turns (1.5/s per rank) plus, every 10 s, one prompt
  of 15K-16K tokens (128-384 output) on each of the first half of the ranks at the same time.

Workloads shaped by public production-trace statistics (the traces themselves are not
bundled or downloaded; lengths are drawn from log-normals matched to the published
summaries, arrivals from a Gamma renewal process):

* ``code``: a prefill-heavy coding trace. Azure LLM inference trace 2023 (Patel et al.,
  "Splitwise", ISCA 2024; ``AzureLLMInferenceTrace_code``): median prompt about 1.5K
  tokens and median output about 13 tokens; the 2024 trace (Stojkovic et al.,
  "DynamoLLM", HPCA 2025) has coding prompts of about 2K tokens and outputs of about
  20-30. Used here: prompt log-normal median 1500, sigma 0.7 (mean ~1.9K), cap 8192;
  output log-normal median 15, sigma 0.8 (mean ~21), cap 512; 2.5 req/s per rank.
* ``conv``: a conversation trace. Azure 2023 conversation: median prompt about 1K tokens,
  median output about 130 (Splitwise); the 2024 trace's conversation outputs average
  about 250. Used here: prompt median 1020, sigma 0.8 (mean ~1.4K), cap 8192; output
  median 150, sigma 0.9 (mean ~225), cap 2048; 1.6 req/s per rank.
* ``low``: the conversation shape at 0.3 req/s per rank, far below capacity: throughput
  is the offered load for every policy and nothing should separate them (a check that
  balance mode costs nothing when there is nothing to balance).

Arrivals of ``code``, ``conv`` and ``low`` are bursty: BurstGPT (Wang et al., 2024, Azure
OpenAI GPT traces) reports request inter-arrival times better fitted by a Gamma than by
an exponential distribution; we use Gamma inter-arrivals of shape 0.5 (coefficient of
variation 1.4, against 1.0 for Poisson). Mooncake's traces (Qin et al., FAST 2025) are
dominated by very long, prefix-shared prompts, which this single-tenant setup without
KV transfer does not model; they are not used.

Arrival rates scale with ``dp`` so every DP size sees a similar per-rank load.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

WORKLOADS = ("a", "b", "c", "code", "conv", "low", "burst")


@dataclass(order=True)
class Arrival:
    time: float
    seq: int
    prompt_len: int = field(compare=False)
    output_len: int = field(compare=False)
    rank: int | None = field(compare=False, default=None)  # pinned rank, else routed


class Workload:
    """Base: a heap of future arrivals; closed-loop workloads refill it on finishes."""

    name = "?"
    description = ""
    # Open loop: arrivals do not depend on service (every workload but the closed loop).
    # Its throughput is then scored on what the window's own arrivals got served (see
    # RunResult.served_tok_s), not on tokens that happen to be generated in the window.
    open_loop = True

    def __init__(self, dp: int, max_num_seqs: int, seed: int) -> None:
        self.dp = dp
        self.max_num_seqs = max_num_seqs
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._heap: list[Arrival] = []
        self._seq = 0

    def _push(self, t: float, prompt_len: int, output_len: int, rank: int | None = None) -> None:
        heapq.heappush(self._heap, Arrival(t, self._seq, int(prompt_len), int(output_len), rank))
        self._seq += 1

    def pop_until(self, t: float) -> list[Arrival]:
        out = []
        while self._heap and self._heap[0].time <= t:
            out.append(heapq.heappop(self._heap))
        return out

    def next_time(self) -> float | None:
        return self._heap[0].time if self._heap else None

    def on_finish(self, t: float) -> None:
        """A request finished at ``t`` (closed-loop workloads issue the next one)."""


class ClosedLoopLong(Workload):
    name = "a"
    description = "closed loop, 2x capacity in flight, prompt 3500 / output 1500 +-10%"
    open_loop = False

    def __init__(self, dp: int, max_num_seqs: int, seed: int, prompt: int = 3500, output: int = 1500):
        super().__init__(dp, max_num_seqs, seed)
        self.prompt, self.output = prompt, output
        for _ in range(2 * dp * max_num_seqs):
            self._new(0.0)

    def _new(self, t: float) -> None:
        jp, jo = self.rng.uniform(0.9, 1.1, size=2)
        self._push(t, max(1, round(self.prompt * jp)), max(1, round(self.output * jo)))

    def on_finish(self, t: float) -> None:
        self._new(t)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, cap: int) -> int:
    return int(min(cap, max(4, round(rng.lognormal(np.log(median), sigma)))))


class PoissonShareGPT(Workload):
    name = "b"
    description = "Poisson arrivals, ShareGPT-like mixed lengths"

    def __init__(
        self, dp: int, max_num_seqs: int, seed: int, rate_per_rank: float = 4.5, horizon_s: float = 3600.0
    ):
        super().__init__(dp, max_num_seqs, seed)
        rate = rate_per_rank * dp
        t = 0.0
        while True:
            t += self.rng.exponential(1.0 / rate)
            if t > horizon_s:
                break
            if self.rng.random() < 0.75:
                p, o = _lognormal(self.rng, 256, 0.9, 8192), _lognormal(self.rng, 192, 0.8, 2048)
            else:
                p, o = _lognormal(self.rng, 2048, 0.6, 8192), _lognormal(self.rng, 256, 0.7, 2048)
            self._push(t, p, o)


class SkewedBursts(Workload):
    name = "c"
    description = "chat background + bursts of long prompts pinned to 1/4 of the ranks"

    def __init__(
        self,
        dp: int,
        max_num_seqs: int,
        seed: int,
        rate_per_rank: float = 1.5,
        burst_every_s: float = 20.0,
        burst_per_rank: int = 4,
        horizon_s: float = 3600.0,
    ):
        super().__init__(dp, max_num_seqs, seed)
        t = 0.0
        rate = rate_per_rank * dp
        while True:
            t += self.rng.exponential(1.0 / rate)
            if t > horizon_s:
                break
            self._push(t, _lognormal(self.rng, 256, 0.9, 8192), _lognormal(self.rng, 192, 0.8, 2048))
        hot = max(1, dp // 4)
        tb = burst_every_s / 2
        while tb <= horizon_s:
            for r in range(hot):
                for _ in range(burst_per_rank):
                    p = int(self.rng.integers(6144, 8193))
                    o = int(self.rng.integers(128, 385))
                    self._push(tb + float(self.rng.uniform(0, 0.2)), p, o, rank=r)
            tb += burst_every_s


class HalfRankBursts(Workload):
    """Poisson chat load plus, every ``burst_every_s``, one ~16K-token prompt on each of the first
    half of the ranks at once (the shape of issue 24's held-out burst gap)."""

    name = "burst"
    description = "chat background + a ~16K prompt on half the ranks at once every 10 s"

    def __init__(
        self,
        dp: int,
        max_num_seqs: int,
        seed: int,
        rate_per_rank: float = 1.5,
        burst_every_s: float = 10.0,
        horizon_s: float = 3600.0,
    ):
        super().__init__(dp, max_num_seqs, seed)
        t = 0.0
        rate = rate_per_rank * dp
        while True:
            t += self.rng.exponential(1.0 / rate)
            if t > horizon_s:
                break
            self._push(t, _lognormal(self.rng, 256, 0.9, 8192), _lognormal(self.rng, 192, 0.8, 2048))
        hot = max(1, dp // 2)
        tb = burst_every_s / 2
        while tb <= horizon_s:
            for r in range(hot):
                # Prompt + output stay within the simulator's 16384-token max_model_len.
                p = int(self.rng.integers(15000, 16000))
                o = int(self.rng.integers(128, 385))
                self._push(tb + float(self.rng.uniform(0, 0.2)), p, o, rank=r)
            tb += burst_every_s


class TraceShaped(Workload):
    """Gamma-renewal arrivals with log-normal prompt and output lengths (see module doc)."""

    def __init__(
        self,
        name: str,
        dp: int,
        max_num_seqs: int,
        seed: int,
        *,
        rate_per_rank: float,
        prompt: tuple[float, float, int],
        output: tuple[float, float, int],
        gamma_shape: float = 0.5,
        horizon_s: float = 3600.0,
    ):
        super().__init__(dp, max_num_seqs, seed)
        self.name = name
        if rate_per_rank <= 0 or gamma_shape <= 0:
            raise ValueError("rate_per_rank and gamma_shape must be > 0")
        rate = rate_per_rank * dp
        # Mean inter-arrival 1/rate: Gamma(shape k, scale 1/(k*rate)).
        scale = 1.0 / (gamma_shape * rate)
        t = 0.0
        while True:
            t += self.rng.gamma(gamma_shape, scale)
            if t > horizon_s:
                break
            p = _lognormal(self.rng, prompt[0], prompt[1], prompt[2])
            o = _lognormal(self.rng, output[0], output[1], output[2])
            self._push(t, p, o)


# (rate per rank, prompt (median, sigma, cap), output (median, sigma, cap)); see module doc.
TRACE_SHAPES = {
    "code": (2.5, (1500, 0.7, 8192), (15, 0.8, 512)),
    "conv": (1.6, (1020, 0.8, 8192), (150, 0.9, 2048)),
    "low": (0.3, (1020, 0.8, 8192), (150, 0.9, 2048)),
}
DESCRIPTIONS = {
    "a": "closed loop, 2x capacity in flight, 3.5K in / 1.5K out",
    "b": "Poisson, ShareGPT-like mixed lengths, 4.5 req/s per rank",
    "c": "chat background + long-prompt bursts pinned to 1/4 of the ranks",
    "code": "Azure-coding-shaped: ~1.5K in / ~15 out, bursty, 2.5 req/s per rank",
    "conv": "Azure-conversation-shaped: ~1K in / ~150 out, bursty, 1.6 req/s per rank",
    "low": "conversation shape at 0.3 req/s per rank (far below capacity)",
    "burst": "chat 1.5 req/s per rank + a ~16K prompt on half the ranks at once every 10 s",
}


def make_workload(name: str, dp: int, max_num_seqs: int, seed: int) -> Workload:
    if name == "a":
        return ClosedLoopLong(dp, max_num_seqs, seed)
    if name == "b":
        return PoissonShareGPT(dp, max_num_seqs, seed)
    if name == "c":
        return SkewedBursts(dp, max_num_seqs, seed)
    if name == "burst":
        return HalfRankBursts(dp, max_num_seqs, seed)
    if name in TRACE_SHAPES:
        rate, prompt, output = TRACE_SHAPES[name]
        return TraceShaped(name, dp, max_num_seqs, seed, rate_per_rank=rate, prompt=prompt, output=output)
    raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")
