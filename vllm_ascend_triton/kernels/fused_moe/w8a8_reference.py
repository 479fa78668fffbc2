"""Torch references of the W8A8 MoE path: per-token int8 quant and the W8A8 expert MLP with
exact int32 accumulation (int8 x int8 products summed in int64, then narrowed: exact as long as a
dot product fits int32, which K <= 2^17 guarantees: 127 * 128 * 2^17 < 2^31)."""

from __future__ import annotations

import torch

from vllm_ascend_triton.kernels.fused_moe.reference import _local_ids_ref


def _rne(v: torch.Tensor) -> torch.Tensor:
    # torch.round rounds half to even, as vLLM's int8 quant does.
    return torch.round(v)


def dynamic_per_token_quant_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's dynamic symmetric per-token int8 quant (`scaled_int8_quant` without a scale):
    scale = absmax / 127 (fp32), q = round-half-even(x * (1 / scale)) clamped to [-128, 127].
    An all-zero row gives scale 0 and zeros; a row with NaN gives a NaN scale (q = 0 at NaNs).

    Returns (q int8 of x's shape, scale fp32 [rows, 1])."""
    xf = x.float().reshape(-1, x.shape[-1])
    is_num = xf == xf
    amax = (
        torch.where(is_num, xf.abs(), 0.0).amax(-1, keepdim=True)
        if xf.shape[-1]
        else xf.new_zeros(xf.shape[0], 1)
    )
    scale = amax / 127.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    v = _rne(xf * inv).clamp(-128, 127)
    q = torch.where(v == v, v, 0.0).to(torch.int8)
    scale = torch.where((~is_num).any(-1, keepdim=True), float("nan"), scale)
    return q.reshape(x.shape), scale


def int8_gemm_ref(a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
    """a_q [R, K] int8 @ b_q[N, K].T int8 -> int32 [R, N], exact."""
    return (a_q.long() @ b_q.long().t()).to(torch.int32)


def fused_experts_w8a8_ref(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None = None,
    global_num_experts: int | None = None,
) -> torch.Tensor:
    """The W8A8 expert MLP, expert by expert, in the kernels' order of operations:
    x -> per-token int8 (q, s); g/u = (int32 acc -> fp32) * s * w13_scale;
    act = SiLU(g) * u rounded to the hidden dtype; act -> per-token int8 (q2, s2);
    y = (int32 acc -> fp32) * s2 * w2_scale rounded to the hidden dtype; out = sum_j w_j * y_j in
    fp32, stored in the hidden dtype. Dropped slots contribute nothing.

    Where it may differ from the kernels: only in the last bits of exp (SiLU) and the rounding of
    act to the hidden dtype that follows, which can move a requantized int8 value by one step
    (a relative change of the output of about 1 / 127 of one element's contribution)."""
    dtype = hidden_states.dtype
    inter = w13.shape[1] // 2
    num_local = w13.shape[0]
    if global_num_experts is None:
        global_num_experts = expert_map.shape[0] if expert_map is not None else num_local
    local = _local_ids_ref(topk_ids, expert_map, global_num_experts, num_local)
    s13 = w13_scale.float().reshape(num_local, -1).cpu()
    s2 = w2_scale.float().reshape(num_local, -1).cpu()
    xq, xs = dynamic_per_token_quant_ref(hidden_states.cpu())
    out = torch.zeros(hidden_states.shape, dtype=torch.float32)
    for e in range(num_local):
        tok, slot = torch.nonzero(local == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        acc = int8_gemm_ref(xq[tok], w13[e].cpu()).float()
        h = acc * xs[tok] * s13[e][None, :]
        act = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]).to(dtype)
        aq, as_ = dynamic_per_token_quant_ref(act)
        y = (int8_gemm_ref(aq, w2[e].cpu()).float() * as_ * s2[e][None, :]).to(dtype).float()
        out.index_add_(0, tok, topk_weights.cpu()[tok, slot].float()[:, None] * y)
    return out.to(dtype)


def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a weight [..., N, K] (as compressed-tensors' channel
    strategy stores it): scale = absmax over K / 127, q = round-half-even(w / scale).

    Returns (q int8 [..., N, K], scale fp32 [..., N, 1])."""
    wf = w.float()
    scale = (wf.abs().amax(-1, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = _rne(wf / scale).clamp(-128, 127).to(torch.int8)
    return q, scale
