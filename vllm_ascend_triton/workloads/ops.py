"""Benchmark and tuning workloads: one public host-API call per (op, real model, token count).

Each `Workload` builds its inputs on this backend's device and returns a `Prepared` call:
- `run()`: our kernel through its public host API (what `vat tune` dry-runs and `vat bench` times);
- `check()`: max |error| of ours against the family's torch reference (fresh inputs);
- `baseline()`: a plain torch implementation on the same device, for the cuda comparison (torch
  top-k / sort for routing, matmuls for the experts, SDPA for attention, vLLM's `forward_static`
  when vLLM is importable, else a torch rope);
- `hbm_bytes` / `flops`: the minimum traffic and useful work of the op (for GB/s, TFLOP/s and the
  share of the roofline).

Only torch, numpy and our package are imported (no triton-ascend-specific module), so the GPU
script runs with upstream Triton. Inputs are fp16 (exact on Triton's interpreter).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable
from typing import Any

import torch

from vllm_ascend_triton.workloads.shapes import ModelShape, ShapeSet

DTYPE = torch.float16
MAX_ATTENTION_SEQS = 256  # decode sequences per attention benchmark (a paged cache each)


@dataclasses.dataclass
class Prepared:
    run: Callable[[], Any]
    check: Callable[[], float] | None
    baseline: Callable[[], Any] | None
    baseline_name: str
    hbm_bytes: float
    flops: float
    atol: float


@dataclasses.dataclass(frozen=True)
class Workload:
    op: str  # "rope", "fused_topk", ...
    family: str  # kernel family (kernels.FAMILIES)
    model: ModelShape
    tokens: int
    context: int  # KV tokens per sequence (attention)
    block_size: int  # KV cache block size (attention)
    build: Callable[[Workload, str, bool], Prepared]
    max_experts: int | None = None  # keep only this many experts' weights (memory of dry runs, CPU)

    @property
    def label(self) -> str:
        return f"{self.op}[{self.model.name},T={self.tokens}]"

    def prepare(self, device: str, fill: bool = True) -> Prepared:
        """Inputs on `device`; `fill=False` leaves data tensors uninitialised (dry runs only)."""
        return self.build(self, device, fill)


def _reference(family: str, name: str) -> Callable[..., Any]:
    """A torch reference of a family, from its `reference` module (or the family module)."""
    for module in (f"vllm_ascend_triton.kernels.{family}.reference", f"vllm_ascend_triton.kernels.{family}"):
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    raise LookupError(f"no reference {name} in the {family} family")


@functools.cache  # resolved once: host-cost figures time the op, not the package's lazy import
def _api(name: str) -> Callable[..., Any]:
    import vllm_ascend_triton.kernels as kernels

    return getattr(kernels, name)


def _data(shape: tuple[int, ...], device: str, fill: bool, g: torch.Generator, dtype=DTYPE) -> torch.Tensor:
    if not fill:
        return torch.empty(shape, dtype=dtype, device=device)
    if torch.device(device).type != "cpu":  # large weights: generate on the device, not the host
        gen = torch.Generator(device=device).manual_seed(sum(shape))
        return torch.randn(shape, device=device, dtype=torch.float32, generator=gen).to(dtype)
    return torch.randn(shape, generator=g).to(dtype).to(device)


def _err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
        return math.inf
    diff = (actual.detach().double().cpu() - expected.detach().double().cpu()).abs()
    return float(diff.max()) if diff.numel() else 0.0


# --- rope -----------------------------------------------------------------------------------------


def _torch_rope(positions, query, key, head_size, cache, is_neox):
    """vLLM's forward_static when vLLM is importable, else the family's torch reference."""
    try:
        from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

        return RotaryEmbedding.forward_static(
            positions, query, key, head_size, cache.shape[1], cache, is_neox
        )
    except Exception:
        return _reference("rope", "rope_reference")(positions, query, key, head_size, cache, is_neox)


def _build_rope(w: Workload, device: str, fill: bool) -> Prepared:
    m, t = w.model, w.tokens
    heads, kv, hs, rot = m.get("num_heads"), m.get("num_kv_heads"), m.get("head_size"), m.get("rotary_dim")
    neox = bool(m.get("is_neox", True))
    g = torch.Generator().manual_seed(0)
    max_pos = 4096
    q = _data((t, heads * hs), device, fill, g)
    k = _data((t, kv * hs), device, fill, g)
    cache = _data((max_pos, rot), device, True, g)
    mrope = m.get("mrope_section")
    if mrope is not None:
        pos = torch.randint(0, max_pos, (3, t), generator=g).to(device)
    else:
        pos = torch.randint(0, max_pos, (t,), generator=g).to(device)

    def run():
        if mrope is not None:
            return _api("mrope_rotary_embedding")(pos, q, k, hs, cache, neox, list(mrope))
        return _api("rotary_embedding")(pos, q, k, hs, cache, neox)

    def check() -> float:
        q1, k1 = q.clone(), k.clone()
        if mrope is not None:
            _api("mrope_rotary_embedding")(pos, q1, k1, hs, cache, neox, list(mrope))
            eq, ek = _reference("rope", "mrope_reference")(
                pos, q.clone(), k.clone(), hs, cache, neox, list(mrope)
            )
        else:
            _api("rotary_embedding")(pos, q1, k1, hs, cache, neox)
            eq, ek = _reference("rope", "rope_reference")(pos, q.clone(), k.clone(), hs, cache, neox)
        return max(_err(q1, eq), _err(k1, ek))

    def baseline():
        if mrope is not None:
            return _reference("rope", "mrope_reference")(pos, q, k, hs, cache, neox, list(mrope))
        return _torch_rope(pos, q, k, hs, cache, neox)

    elem = q.element_size()
    hbm = t * ((heads + kv) * rot * elem * 2 + rot * elem + 8 * (3 if mrope else 1))
    return Prepared(
        run, check, baseline, "torch MRoPE reference" if mrope else "vLLM forward_static / torch rope",
        hbm, 3.0 * t * (heads + kv) * rot, 1e-3,
    )  # fmt: skip


# --- routing --------------------------------------------------------------------------------------


def _routing_inputs(w: Workload, device: str, fill: bool):
    m = w.model
    g = torch.Generator().manual_seed(1)
    e = m.get("num_experts")
    logits = (
        torch.randn(w.tokens, e, generator=g).float().to(device)
        if fill
        else torch.zeros(w.tokens, e, device=device)
    )
    bias = torch.randn(e, generator=g).float().mul(0.1).to(device) if m.get("correction_bias") else None
    return logits, bias


def _sorted_rows(weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.long().argsort(dim=1)
    return weights.gather(1, order), ids.long().gather(1, order)


def _routing_err(got, want) -> float:
    gw, gi = _sorted_rows(got[0].cpu().float(), got[1].cpu())
    ww, wi = _sorted_rows(want[0].cpu().float(), want[1].cpu())
    if not torch.equal(gi, wi):
        return math.inf  # a different expert chosen
    return _err(gw, ww)


def _build_topk(w: Workload, device: str, fill: bool) -> Prepared:
    m = w.model
    logits, bias = _routing_inputs(w, device, fill)
    k, renorm = m.get("topk"), bool(m.get("renormalize", True))
    scoring, scale = m.get("scoring_func", "softmax"), float(m.get("routed_scaling_factor", 1.0))
    grouped = w.op == "grouped_topk"
    groups, topk_group = m.get("num_expert_group", 1), m.get("topk_group", 1)

    def run():
        if grouped:
            return _api("grouped_topk")(logits, k, renorm, groups, topk_group, scoring, bias, scale)
        return _api("fused_topk")(logits, k, renorm, scoring, bias, scale)

    def check() -> float:
        ref = _reference("moe_routing", "grouped_topk_ref")
        want = ref(logits.cpu(), k, renorm, groups if grouped else 1, topk_group if grouped else 1, scoring,
                   bias.cpu() if bias is not None else None, scale)  # fmt: skip
        return _routing_err(run(), want)

    def baseline():
        scores = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
        choose = scores + bias if bias is not None else scores
        if grouped and groups > 1:
            grouped_scores = choose.view(w.tokens, groups, -1).topk(2, dim=-1).values.sum(-1)
            keep = grouped_scores.topk(topk_group, dim=-1).indices
            mask = torch.zeros_like(grouped_scores).scatter_(1, keep, 1.0)
            mask = (
                mask.unsqueeze(-1).expand(w.tokens, groups, choose.shape[1] // groups).reshape(w.tokens, -1)
            )
            choose = choose.masked_fill(mask == 0, float("-inf"))
        ids = choose.topk(k, dim=-1).indices
        weights = scores.gather(1, ids)
        if renorm:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * scale, ids.to(torch.int32)

    e = m.get("num_experts")
    hbm = w.tokens * (e * 4 + k * 8) + (e * 4 if bias is not None else 0)
    return Prepared(run, check, baseline, "torch softmax/sigmoid + topk", hbm, 4.0 * w.tokens * e, 1e-5)


def _build_align(w: Workload, device: str, fill: bool) -> Prepared:
    m = w.model
    e, k, block = m.get("num_experts"), m.get("topk"), 64
    g = torch.Generator().manual_seed(2)
    ids = (
        torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(w.tokens)]).to(torch.int32).to(device)
    )

    def run():
        return _api("moe_align_block_size")(ids, block, e)

    def check() -> float:
        got = run()
        want = _reference("moe_routing", "moe_align_block_size_ref")(ids.cpu(), block, e)
        same = all(torch.equal(a.cpu().long(), b.cpu().long()) for a, b in zip(got, want, strict=True))
        return 0.0 if same else math.inf

    def baseline():
        flat = ids.reshape(-1).long()
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=e)
        padded = (counts + block - 1) // block * block
        return order.to(torch.int32), padded.cumsum(0)

    numel = w.tokens * k
    hbm = numel * 4 * 2 + e * 8
    return Prepared(run, check, baseline, "torch argsort + bincount", hbm, float(numel), 0.0)


# --- experts --------------------------------------------------------------------------------------


def _build_experts(w: Workload, device: str, fill: bool) -> Prepared:
    m = w.model
    h, inter, k = m.get("hidden_size"), m.get("moe_intermediate_size"), m.get("topk")
    # The interpreter (and a dry run) keep only `max_experts` experts' weights: the GEMM shapes
    # (N, K) are the model's; which experts a token uses does not change them.
    e = min(m.get("num_experts"), w.max_experts or m.get("num_experts"))
    g = torch.Generator().manual_seed(3)
    x = _data((w.tokens, h), device, fill, g)
    w13 = _data((e, 2 * inter, h), device, fill, g)
    w2 = _data((e, h, inter), device, fill, g)
    if fill:  # keep activations in range (no copies in dry runs: the weights may be large)
        x.mul_(0.5)
        w13.mul_(0.05)
        w2.mul_(0.05)
    ids = torch.stack([torch.randperm(e, generator=g)[: min(k, e)] for _ in range(w.tokens)]).to(torch.int32)
    weights = torch.rand(ids.shape, generator=g).float()
    ids, weights = ids.to(device), weights.to(device)

    def run():
        return _api("fused_experts")(x, w13, w2, weights, ids)

    def check() -> float:
        if torch.device(device).type != "cpu":
            # Full weights are GBs: compare with the torch matmuls on the device instead of a CPU copy.
            return _err(run(), baseline())
        want = _reference("fused_moe", "fused_experts_ref")(x, w13, w2, weights, ids)
        return _err(run(), want)

    def baseline():
        out = torch.zeros(w.tokens, h, dtype=torch.float32, device=x.device)
        for expert in ids.unique().tolist():
            rows, slot = (ids == expert).nonzero(as_tuple=True)
            gate_up = x[rows] @ w13[expert].t()
            act = torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]
            out.index_add_(0, rows, (act @ w2[expert].t()).float() * weights[rows, slot, None])
        return out.to(x.dtype)

    touched = min(e, w.tokens * ids.shape[1])
    elem = x.element_size()
    hbm = touched * 3 * inter * h * elem + w.tokens * h * elem * 2
    flops = 2.0 * w.tokens * ids.shape[1] * 3 * inter * h
    return Prepared(run, check, baseline, "torch matmuls per expert", hbm, flops, 2e-2)


def _build_experts_w8a8(w: Workload, device: str, fill: bool) -> Prepared:
    """W8A8 experts (issue 23): int8 weights with per-channel fp32 scales, fp16 activations quantized
    per token inside the op; the same routing and shapes as `_build_experts`."""
    m = w.model
    h, inter, k = m.get("hidden_size"), m.get("moe_intermediate_size"), m.get("topk")
    e = min(m.get("num_experts"), w.max_experts or m.get("num_experts"))
    g = torch.Generator().manual_seed(3)
    x = _data((w.tokens, h), device, fill, g)

    def int8(shape: tuple[int, ...]) -> torch.Tensor:
        if not fill:
            return torch.empty(shape, dtype=torch.int8, device=device)
        return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8).to(device)

    w13, w2 = int8((e, 2 * inter, h)), int8((e, h, inter))
    s13 = torch.full((e, 2 * inter, 1), 0.05 / 127 / h**0.5, device=device)
    s2 = torch.full((e, h, 1), 0.05 / 127 / inter**0.5, device=device)
    if fill:
        x.mul_(0.5)
    ids = torch.stack([torch.randperm(e, generator=g)[: min(k, e)] for _ in range(w.tokens)]).to(torch.int32)
    weights = torch.rand(ids.shape, generator=g).float()
    ids, weights = ids.to(device), weights.to(device)

    def run():
        return _api("fused_experts_w8a8")(x, w13, w2, s13, s2, weights, ids)

    def check() -> float:
        if torch.device(device).type != "cpu":
            return _err(run(), baseline())
        want = _reference("fused_moe.w8a8", "fused_experts_w8a8_ref")(x, w13, w2, s13, s2, weights, ids)
        return _err(run(), want)

    def baseline():
        # Dequantized weights and float matmuls per expert (no activation quantization).
        out = torch.zeros(w.tokens, h, dtype=torch.float32, device=x.device)
        for expert in ids.unique().tolist():
            rows, slot = (ids == expert).nonzero(as_tuple=True)
            gate_up = x[rows].float() @ (w13[expert].float() * s13[expert]).t()
            act = (torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(x.dtype).float()
            y = act @ (w2[expert].float() * s2[expert]).t()
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return out.to(x.dtype)

    touched = min(e, w.tokens * ids.shape[1])
    elem = x.element_size()
    # int8 weights (1 byte) and their fp32 scales; activations read and written once.
    hbm = touched * (3 * inter * h + 4 * (2 * inter + h)) + w.tokens * h * elem * 2
    flops = 2.0 * w.tokens * ids.shape[1] * 3 * inter * h
    return Prepared(run, check, baseline, "torch matmuls on dequantized weights", hbm, flops, 3e-2)


# --- attention ------------------------------------------------------------------------------------


def _paged(w: Workload, device: str, seqs: int):
    m = w.model
    case = _reference("attention", "make_paged_case")(
        [1] * seqs, [w.context] * seqs, m.get("num_heads"), m.get("num_kv_heads"), m.get("head_size"),
        w.block_size, DTYPE, seed=4,
    )  # fmt: skip
    return {k: v.to(device) for k, v in case.items()}


def _build_attention(w: Workload, device: str, fill: bool) -> Prepared:
    m = w.model
    seqs = w.tokens  # decode: one query token per sequence
    c = _paged(w, device, seqs)
    hs = m.get("head_size")
    scale = hs**-0.5
    out = torch.empty_like(c["q"])
    args = (c["cu_seqlens_q"], 1, c["seqused_k"], w.context, scale, True, (-1, -1), c["block_table"], 0.0)

    def run():
        return _api("unified_attention")(c["q"], c["k_cache"], c["v_cache"], out, *args)

    def check() -> float:
        run()
        ref = _reference("attention", "unified_attention_reference")
        want = ref(c["q"].cpu(), c["k_cache"].cpu(), c["v_cache"].cpu(), c["cu_seqlens_q"].cpu(),
                   c["seqused_k"].cpu(), scale, True, (-1, -1), c["block_table"].cpu(), 0.0)  # fmt: skip
        return _err(out.double(), want)

    def baseline():
        # Gather each sequence's keys/values and run SDPA (GQA by repeating KV heads).
        bt, kc, vc = c["block_table"], c["k_cache"], c["v_cache"]
        nblocks = -(-w.context // w.block_size)
        keys = kc[bt[:, :nblocks].long()].flatten(1, 2)[:, : w.context].transpose(1, 2)
        vals = vc[bt[:, :nblocks].long()].flatten(1, 2)[:, : w.context].transpose(1, 2)
        rep = m.get("num_heads") // m.get("num_kv_heads")
        q = c["q"].unsqueeze(2)  # [S, Hq, 1, D]
        keys, vals = keys.repeat_interleave(rep, 1), vals.repeat_interleave(rep, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, keys, vals, scale=scale)

    elem = c["q"].element_size()
    kv_bytes = seqs * w.context * m.get("num_kv_heads") * hs * elem * 2
    hbm = kv_bytes + 2 * seqs * m.get("num_heads") * hs * elem
    flops = 4.0 * seqs * m.get("num_heads") * w.context * hs
    return Prepared(run, check, baseline, "gather + torch SDPA", hbm, flops, 2e-2)


def _build_cache_write(w: Workload, device: str, fill: bool) -> Prepared:
    m = w.model
    kv, hs, block = m.get("num_kv_heads"), m.get("head_size"), w.block_size
    g = torch.Generator().manual_seed(5)
    blocks = -(-w.tokens // block) + 2
    key = _data((w.tokens, kv, hs), device, fill, g)
    value = _data((w.tokens, kv, hs), device, fill, g)
    kc = torch.zeros(blocks, block, kv, hs, dtype=DTYPE, device=device)
    vc = torch.zeros_like(kc)
    slots = torch.randperm(blocks * block, generator=g)[: w.tokens].to(torch.int64).to(device)

    def run():
        return _api("reshape_and_cache")(key, value, kc, vc, slots)

    def check() -> float:
        run()
        rk, rv = torch.zeros_like(kc).cpu(), torch.zeros_like(vc).cpu()
        _reference("attention", "reshape_and_cache_reference")(key.cpu(), value.cpu(), rk, rv, slots.cpu())
        return max(_err(kc, rk), _err(vc, rv))

    def baseline():
        kc.view(-1, kv, hs).index_copy_(0, slots, key)
        vc.view(-1, kv, hs).index_copy_(0, slots, value)

    hbm = 4.0 * w.tokens * kv * hs * key.element_size() + w.tokens * 8
    return Prepared(run, check, baseline, "torch index_copy_", hbm, 0.0, 0.0)


# --- MLA ------------------------------------------------------------------------------------------


def _mla_dims(w: Workload) -> tuple[int, int, int]:
    m = w.model
    return m.get("num_heads"), m.get("kv_lora_rank"), m.get("qk_rope_head_dim")


def _build_mla_decode(w: Workload, device: str, fill: bool) -> Prepared:
    """MQA over the latent cache, one query token per sequence (tokens = sequences), `context`
    cached tokens each. Memory bound on the latent cache: (L + R) * elem bytes per cached token
    (DeepSeek-V3 / Kimi-K2 in fp16: 576 * 2 = 1152 B), read once per sequence in the minimum."""
    heads, lora, rope = _mla_dims(w)
    seqs = w.tokens
    g = torch.Generator().manual_seed(6)
    per_seq = -(-w.context // w.block_size)
    cache = _data((seqs * per_seq, w.block_size, lora + rope), device, fill, g)
    q = _data((seqs, heads, lora + rope), device, fill, g)
    perm = torch.randperm(seqs * per_seq, generator=g).to(torch.int32)
    table = perm.reshape(seqs, per_seq).to(device)
    lens = torch.full((seqs,), w.context, dtype=torch.int32, device=device)
    out = torch.empty(seqs, heads, lora, dtype=DTYPE, device=device)
    scale = (lora + rope) ** -0.5

    def run():
        return _api("mla_decode")(q, cache, out, table, lens, w.context, scale, lora)

    def check() -> float:
        run()
        ref = _reference("mla", "mla_decode_reference")
        want, _ = ref(q.cpu(), cache.cpu(), table.cpu(), lens.cpu(), scale, lora)
        return _err(out.double(), want)

    def baseline():
        keys = cache[table.long()].flatten(1, 2)[:, : w.context]  # [S, ctx, L + R]
        probs = torch.softmax((q.float() @ keys.float().transpose(1, 2)) * scale, dim=-1)
        return (probs @ keys[..., :lora].float()).to(q.dtype)

    elem = q.element_size()
    hbm = seqs * w.context * (lora + rope) * elem + seqs * heads * (2 * lora + rope) * elem
    flops = 2.0 * seqs * heads * w.context * (2 * lora + rope)
    return Prepared(run, check, baseline, "gather + torch matmuls", hbm, flops, 2e-2)


def _build_mla_prefill(w: Workload, device: str, fill: bool) -> Prepared:
    """Causal prefill of one sequence of `tokens` new tokens over decompressed heads (qk = nope +
    rope, v), as vLLM's MLA prefill backend runs it; each tensor read or written once."""
    m = w.model
    heads, dv = m.get("num_heads"), m.get("v_head_dim")
    dqk = m.get("qk_nope_head_dim") + m.get("qk_rope_head_dim")
    t = w.tokens
    g = torch.Generator().manual_seed(7)
    q, k = _data((t, heads, dqk), device, fill, g), _data((t, heads, dqk), device, fill, g)
    v = _data((t, heads, dv), device, fill, g)
    cu = torch.tensor([0, t], dtype=torch.int32, device=device)
    out = torch.empty(t, heads, dv, dtype=DTYPE, device=device)
    scale = dqk**-0.5

    def run():
        return _api("mla_prefill")(q, k, v, out, cu, cu, t, t, scale, True)

    def check() -> float:
        run()
        ref = _reference("mla", "mla_prefill_reference")
        want, _ = ref(q.cpu(), k.cpu(), v.cpu(), cu.cpu(), cu.cpu(), scale, True)
        return _err(out.double(), want)

    def baseline():
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=scale
        ).transpose(0, 1)

    elem = q.element_size()
    hbm = t * heads * (2 * dqk + 2 * dv) * elem
    flops = 2.0 * heads * (t * (t + 1) / 2) * (dqk + dv)
    return Prepared(run, check, baseline, "torch SDPA", hbm, flops, 2e-2)


def _build_mla_cache_write(w: Workload, device: str, fill: bool) -> Prepared:
    _, lora, rope = _mla_dims(w)
    g = torch.Generator().manual_seed(8)
    blocks = -(-w.tokens // w.block_size) + 2
    kv_c, k_pe = _data((w.tokens, lora), device, fill, g), _data((w.tokens, 1, rope), device, fill, g)
    cache = torch.zeros(blocks, w.block_size, lora + rope, dtype=DTYPE, device=device)
    slots = torch.randperm(blocks * w.block_size, generator=g)[: w.tokens].to(torch.int64).to(device)

    def run():
        return _api("concat_and_cache_mla")(kv_c, k_pe, cache, slots)

    def check() -> float:
        run()
        want = torch.zeros_like(cache).cpu()
        _reference("mla", "concat_and_cache_mla_reference")(kv_c.cpu(), k_pe.cpu(), want, slots.cpu())
        return _err(cache, want)

    def baseline():
        cache.view(-1, lora + rope).index_copy_(0, slots, torch.cat([kv_c, k_pe[:, 0]], dim=-1))

    hbm = 2.0 * w.tokens * (lora + rope) * kv_c.element_size() + w.tokens * 8
    return Prepared(run, check, baseline, "torch cat + index_copy_", hbm, 0.0, 0.0)


# --- the table ------------------------------------------------------------------------------------

# op -> (family, required model fields, builder)
OPS: dict[str, tuple[str, tuple[str, ...], Callable[[Workload, str, bool], Prepared]]] = {
    "rope": ("rope", ("num_heads", "num_kv_heads", "head_size", "rotary_dim"), _build_rope),
    "fused_topk": ("moe_routing", ("num_experts", "topk"), _build_topk),
    "grouped_topk": ("moe_routing", ("num_experts", "topk", "num_expert_group"), _build_topk),
    "moe_align_block_size": ("moe_routing", ("num_experts", "topk"), _build_align),
    "fused_experts": (
        "fused_moe",
        ("hidden_size", "moe_intermediate_size", "num_experts", "topk"),
        _build_experts,
    ),
    "fused_experts_w8a8": (
        "fused_moe",
        ("hidden_size", "moe_intermediate_size", "num_experts", "topk", "quant"),
        _build_experts_w8a8,
    ),
    "reshape_and_cache": ("attention", ("num_kv_heads", "head_size"), _build_cache_write),
    "unified_attention": ("attention", ("num_heads", "num_kv_heads", "head_size"), _build_attention),
    "concat_and_cache_mla": ("mla", ("kv_lora_rank", "qk_rope_head_dim"), _build_mla_cache_write),
    "mla_decode": ("mla", ("num_heads", "kv_lora_rank", "qk_rope_head_dim"), _build_mla_decode),
    "mla_prefill": (
        "mla",
        ("num_heads", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
        _build_mla_prefill,
    ),
}


def _applies(op: str, model: ModelShape) -> bool:
    family, fields, _ = OPS[op]
    if not model.has(*fields):
        return False
    if (op == "fused_experts_w8a8") != (model.get("quant") == "w8a8_dynamic"):
        return False  # a quantized model's entry is benched by its quantized op only
    if op == "fused_topk" and model.has("num_expert_group"):
        return False  # grouped routing models run grouped_topk
    if op in ("reshape_and_cache", "unified_attention") and model.get("mla"):
        return False  # MLA's latent cache is not this paged GQA layout
    return True


def workloads(
    shapes: ShapeSet,
    tokens: str = "bench",
    ops: list[str] | None = None,
    families: tuple[str, ...] | None = None,
    one_model_per_op: bool = False,
    context: str = "context",
    max_experts: int | None = None,
) -> list[Workload]:
    """Every (op, model, token count) the shapes file describes, in op order."""
    unknown = sorted(set(ops or ()) - set(OPS))
    if unknown:
        raise ValueError(f"unknown bench kernels {unknown}; known: {', '.join(OPS)}")
    all_counts = shapes.token_counts(tokens)
    ctx = int(shapes.tokens.get(context, 1024))
    block = int(shapes.tokens.get("kv_block_size", 128))
    out = []
    for op, (family, _, build) in OPS.items():
        if ops and op not in ops or families is not None and family not in families:
            continue
        models = [m for m in shapes.models if _applies(op, m)]
        # Decode attention: tokens are sequences, each with a paged cache of `ctx` tokens.
        counts = (
            [t for t in all_counts if t <= MAX_ATTENTION_SEQS]
            if op in ("unified_attention", "mla_decode")
            else all_counts
        )
        for model in models[:1] if one_model_per_op else models:
            out.extend(
                Workload(op, family, model, t, ctx, block, build, max_experts)
                for t in counts or all_counts[:1]
            )
    return out
