"""W8A8 MoE on Ascend: dynamic per-token int8 activations, per-channel int8 weights, int8 x int8
-> int32 `tl.dot` on the cube cores.

Semantics
---------
- `dynamic_per_token_quant(x [..., H])` -> `(q int8 [..., H], scale fp32 [rows, 1])`: vLLM's
  `scaled_int8_quant(x)` without a scale (symmetric, dynamic per token): scale = absmax / 127 in
  fp32, q = round-half-even(x * (1 / scale)) clamped to [-128, 127]. The int8 values equal vLLM's
  bit for bit (checked against `vllm._custom_ops.scaled_int8_quant` on this CPU for fp32, fp16 and
  bf16 inputs, ties included). An all-zero row gives scale 0 and zeros; a row holding NaN gets a
  NaN scale (q = 0 at the NaNs), so the NaN reaches that token's outputs and no other's.
- `fused_experts_w8a8(hidden_states [M, H], w13 int8 [L, 2I, H], w2 int8 [L, H, I],
  w13_scale fp32 [L, 2I, 1] (or [L, 2I]; fp16/bf16 are widened), w2_scale fp32 [L, H, 1] (or [L, H]),
  topk_weights [M, k], topk_ids [M, k], activation="silu", expert_map=None, global_num_experts=None)`: vLLM's
  compressed-tensors W8A8 int8 MoE (channel-wise weights, dynamic per-token activations):
  x -> int8 per token; gate/up = dequant(int32 acc) = (acc * s_x) * s_w13; act = SiLU(gate) * up,
  rounded to the hidden dtype; act -> int8 per token; y = (acc * s_act) * s_w2, rounded to the
  hidden dtype; out[t] = sum_j w[t, j] * y[t, j] in fp32, stored in the hidden dtype. Routing, the
  expert_map (EP), `global_num_experts` and the hostile-input contract are `fused_experts`'s
  (`kernels.fused_moe`): out-of-range ids and map entries are dropped with checks off, NaN/inf
  reach only the tokens that use the affected row, weight, scale or expert.

Accuracy (against `fused_experts_w8a8_ref`, exact int32 accumulation): the int8 values of the first
quant and every int32 accumulator are exact (numpy's int32 matmul under the interpreter; the
cube's int32 accumulation on an NPU); the dequantized fp32 values can differ only by the fp32
conversion of |acc| > 2^24 (round to nearest even in both). The SiLU's exp can differ in the last
bit, which after rounding act to the hidden dtype can move a requantized value by one int8 step:
the tests bound outputs at atol = rtol = 2e-2 (fp16/bf16) and 1e-3 (fp32) of the output scale.
Against a float (unquantized) MLP the int8 error is that of W8A8 itself (about 1-2% relative).

Ascend design
-------------
- Routing: the MoE counting sort of `fused_experts` (`kernels.moe_sort`), unchanged.
- Quant fused with the permute (`_per_token_quant_kernel`, vector cores): one program per permuted
  row reads its token's row by one scalar index (no discrete access), takes the absmax over
  contiguous BLOCK_H tiles and writes the int8 row and its scale: the activations are read in
  their dtype and written once as int8, half the bytes of a fp16 gather. Rows of dropped slots are
  not written. The intermediate's quant is the same kernel without the index.
- Expert GEMMs (`_w8a8_grouped_gemm_kernel`, cube cores): the work split of `fused_experts`
  (row tiles of one expert x N tiles, bounded on the host without reading counts), int8 operand
  tiles, int32 accumulators, the dequant (and SiLU-and-mul) in the fp32 epilogue. Tiles are whole
  int8 cube fractals (16 x 32 bytes = 512 bytes): BLOCK_M and BLOCK_N multiples of 16, BLOCK_K a
  multiple of 32; defaults BLOCK_M 32, BLOCK_N 64 (gate-up, two accumulators) / 128 (down),
  BLOCK_K 256; halved along N until the modelled UB use (double-buffered int8 staging, int32
  accumulators, fp32 epilogue tiles) fits the SKU's budget.
- Weight bytes are half of the bf16 path's: at decode, where expert weights dominate the traffic,
  that is the win (see `vat bench`, modelled).

Limits: those of `fused_experts` (`kernels.limits`), and H, I <= `W8A8_MAX_K` so that one int32
accumulator cannot overflow (127 * 128 * K < 2^31).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import triton

from vllm_ascend_triton.kernels.fused_moe import (
    _PLANS,
    ExpertsShape,
    RoutePlan,
    _check_int32_extent,
    begin_experts,
    check_experts,
    experts_key,
    grouped_gemm_spec,
    launch_unpermute,
    route_plan,
    unpermute_spec,
)
from vllm_ascend_triton.kernels.fused_moe._w8a8_kernels import (
    _per_token_quant_kernel,
    _w8a8_grouped_gemm_kernel,
)
from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import (
    dynamic_per_token_quant_ref,
    fused_experts_w8a8_ref,
)
from vllm_ascend_triton.kernels.limits import W8A8_MAX_K
from vllm_ascend_triton.runtime.backend import Backend, current_backend
from vllm_ascend_triton.runtime.checks import FLOAT_DTYPES, check_tensor
from vllm_ascend_triton.runtime.configs import dtype_key, lookup_config
from vllm_ascend_triton.runtime.device import current_device
from vllm_ascend_triton.runtime.launch import LaunchSpec, bf16_shim, persistent_grid
from vllm_ascend_triton.runtime.ub import tile_elements, ub_budget_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "dynamic_per_token_quant",
    "fused_experts_w8a8",
    "dynamic_per_token_quant_ref",
    "fused_experts_w8a8_ref",
    "W8A8_GEMM_KERNELS",
]

QUANT_KERNEL = "w8a8_per_token_quant"
GEMM1_KERNEL = "moe_gemm_w8a8_gate_up"
GEMM2_KERNEL = "moe_gemm_w8a8_down"
W8A8_GEMM_KERNELS = (GEMM1_KERNEL, GEMM2_KERNEL)

DEFAULT_W8A8_GEMM1_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 256}
DEFAULT_W8A8_GEMM2_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 256}
# Cube fractal of int8 operands: 16 rows x 32 bytes (512 bytes).
FRACTAL_ROWS = 16
FRACTAL_K = 32
_MAX_ROW_TILE = 2048


def w8a8_gemm_ub_bytes(cfg: dict, gated: bool) -> int:
    """Modelled UB bytes of one W8A8 GEMM program: double-buffered int8 A/B staging tiles, the int32
    accumulators, and the fp32 epilogue tiles (dequantized gate, up and their product; or one)."""
    m, n, k = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    staging = m * k + (2 if gated else 1) * n * k
    accumulators = (2 if gated else 1) * m * n * 4
    epilogue = (3 if gated else 1) * m * n * 4
    return 2 * staging + accumulators + epilogue


def fractal_aligned(cfg: dict) -> bool:
    """Whether a GEMM config's int8 operand tiles are whole 16 x 32-byte cube fractals."""
    return (
        cfg["BLOCK_M"] % FRACTAL_ROWS == 0
        and cfg["BLOCK_N"] % FRACTAL_ROWS == 0
        and cfg["BLOCK_K"] % FRACTAL_K == 0
    )


def _default_gemm_config(default: dict, gated: bool) -> dict:
    cfg = dict(default)
    budget = ub_budget_bytes(multibuffer=False)
    while cfg["BLOCK_N"] > FRACTAL_ROWS and w8a8_gemm_ub_bytes(cfg, gated) > budget:
        cfg["BLOCK_N"] //= 2
    while cfg["BLOCK_K"] > FRACTAL_K and w8a8_gemm_ub_bytes(cfg, gated) > budget:
        cfg["BLOCK_K"] //= 2
    return cfg


def _gemm_config(kernel: str, n_out: int, k_dim: int, dtype: torch.dtype, default: dict) -> dict:
    base = _default_gemm_config(default, kernel == GEMM1_KERNEL)
    cfg = lookup_config(
        current_device().sku.name, kernel, {"n": n_out, "k": k_dim, "dtype": dtype_key(dtype)}, base
    )
    # Whole fractals, but no padding of tiny problems beyond the next power of two.
    cfg["BLOCK_N"] = max(FRACTAL_ROWS, min(cfg["BLOCK_N"], triton.next_power_of_2(n_out)))
    cfg["BLOCK_K"] = max(FRACTAL_K, min(cfg["BLOCK_K"], triton.next_power_of_2(k_dim)))
    if not fractal_aligned(cfg):
        raise ValueError(
            f"{kernel} config {cfg}: BLOCK_M and BLOCK_N must be multiples of {FRACTAL_ROWS} and BLOCK_K of "
            f"{FRACTAL_K} (whole int8 cube fractals)"
        )
    return cfg


def _quant_config(hidden: int, dtype: torch.dtype) -> dict:
    # Live tiles: the loaded row tile, its fp32 copy, the running absmax / NaN flags, the int8 out.
    default = {"BLOCK_H": min(_MAX_ROW_TILE, tile_elements(4, 4))}
    cfg = lookup_config(
        current_device().sku.name, QUANT_KERNEL, {"hidden": hidden, "dtype": dtype_key(dtype)}, default
    )
    cfg["BLOCK_H"] = min(cfg["BLOCK_H"], max(32, triton.next_power_of_2(hidden)))
    return cfg


def _quant_spec(
    hidden: int, dtype: torch.dtype, num_rows: int, topk: int, has_idx: bool, gather: bool
) -> LaunchSpec:
    """The template of one per-token quant launch, cached per size (tensor arguments None)."""
    plan_key = (QUANT_KERNEL, hidden, dtype, num_rows, topk, has_idx, gather)
    spec = _PLANS.get(plan_key)
    if spec is None:
        cfg = _quant_config(hidden, dtype)
        spec = LaunchSpec(
            name=QUANT_KERNEL,
            kernel=_per_token_quant_kernel,
            grid=persistent_grid(num_rows),
            args=dict(
                src_ptr=None, idx_ptr=None, q_ptr=None, scale_ptr=None, num_rows=num_rows, hidden=hidden,
                topk=topk,
            ),
            constexprs=dict(HAS_IDX=has_idx, GATHER=gather, BLOCK_H=cfg["BLOCK_H"]),
            config=cfg,
        )  # fmt: skip
        _PLANS.put(plan_key, spec)
    return spec


def _launch_quant(
    spec: LaunchSpec, src: torch.Tensor, idx: torch.Tensor | None, q: torch.Tensor, scale: torch.Tensor
) -> None:
    args = {
        **spec.args,
        "src_ptr": src,
        "idx_ptr": idx if idx is not None else scale,
        "q_ptr": q,
        "scale_ptr": scale,
    }
    spec.with_args(args).launch()


def dynamic_per_token_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic per-token int8 quantization, bit-exact with vLLM's `scaled_int8_quant(x)`.

    Args:
        x: fp16/bf16/fp32 tensor [..., H], H >= 1; each row of the last dim is one token.

    Returns:
        (q, scale): q int8 of x's shape; scale fp32 [rows, 1] with rows = x.numel() // H
        (vLLM's layout), scale = absmax / 127 (0 for an all-zero row, NaN for a row with NaN).

    Raises:
        TypeError: x is not a tensor of a float dtype.
        ValueError: x has no dims, an empty last dim, or lives on another device than the backend's.
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    hidden = x.shape[-1]
    rows = x.numel() // hidden
    _check_int32_extent("x", 1, hidden)
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows:
        spec = _quant_spec(hidden, x.dtype, rows, 1, has_idx=False, gather=False)
        with bf16_shim() as shim:
            _launch_quant(spec, shim.input(x.contiguous()), None, q, scale)
    return q, scale


def _check_scale(name: str, scale: object, rows: int, num_local: int, device: torch.device) -> torch.Tensor:
    check_tensor(name, scale, dtypes=FLOAT_DTYPES, ndim=(2, 3))
    assert isinstance(scale, torch.Tensor)
    if scale.shape not in ((num_local, rows, 1), (num_local, rows)):
        raise ValueError(
            f"{name} must have shape {(num_local, rows, 1)} (per output channel) or {(num_local, rows)}, "
            f"got {tuple(scale.shape)}"
        )
    if scale.device != device:
        raise ValueError(f"{name} must be on {device}, got {scale.device}")
    # fp16/bf16 scales (vllm-ascend keeps modelslim's in the model dtype) are widened: the
    # epilogue multiplies in fp32. The kernel reads [L, rows] row-major: either shape's memory.
    return _fp32_scale(scale)


def _fp32_scale(scale: torch.Tensor) -> torch.Tensor:
    if scale.dtype is not torch.float32:
        scale = scale.to(torch.float32)
    return scale.contiguous()


def _interpreted_rounding(t: torch.Tensor, dtype: torch.dtype) -> None:
    """On the interpreter the bf16 shim computes in fp32; the intermediate results that vLLM rounds
    to bf16 are rounded here on purpose, so the interpreter computes what the NPU does."""
    if t.dtype != dtype and current_backend() is Backend.INTERPRETER:
        t.copy_(t.to(dtype))


def _gemm_spec(
    kernel: str, default: dict, dtype: torch.dtype, rows: int, n_out: int, k_dim: int, num_local: int
) -> LaunchSpec:
    cfg = _gemm_config(kernel, n_out, k_dim, dtype, default)
    return grouped_gemm_spec(
        kernel, _w8a8_grouped_gemm_kernel, cfg, kernel == GEMM1_KERNEL, rows, n_out, k_dim, num_local
    )


def _launch_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    offsets: torch.Tensor,
    c: torch.Tensor,
    kernel: str,
    default: dict,
    dtype: torch.dtype,
) -> None:
    """One W8A8 grouped GEMM on these tensors (`c` is `[R, N]`, `b` `[L, N or 2N, K]`), planned
    afresh: for tests; `fused_experts_w8a8` launches its cached templates."""
    spec = _gemm_spec(kernel, default, dtype, a.shape[0], c.shape[1], a.shape[1], b.shape[0])
    _launch_gemm_spec(spec, a, a_scale, b, b_scale, offsets, c)


def _launch_gemm_spec(
    spec: LaunchSpec,
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    offsets: torch.Tensor,
    c: torch.Tensor,
) -> None:
    args = {
        **spec.args, "a_ptr": a, "a_scale_ptr": a_scale, "b_ptr": b, "b_scale_ptr": b_scale,
        "offsets_ptr": offsets, "c_ptr": c,
    }  # fmt: skip
    spec.with_args(args).launch()


@dataclasses.dataclass(frozen=True)
class _W8A8Plan:
    shape: ExpertsShape
    route: RoutePlan
    quant1: LaunchSpec  # templates
    gemm1: LaunchSpec
    quant2: LaunchSpec
    gemm2: LaunchSpec
    combine: LaunchSpec


def _plan_w8a8(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str,
    expert_map: torch.Tensor | None,
    global_num_experts: int | None,
) -> _W8A8Plan | ExpertsShape:
    """Validate a call and plan its launches (an `ExpertsShape` alone without tokens)."""
    shape = check_experts(
        hidden_states, w13, w2, topk_weights, topk_ids, activation, expert_map, global_num_experts, torch.int8
    )
    m, k, h, i, num_local = shape.num_tokens, shape.topk, shape.hidden, shape.inter, shape.num_local
    for name, size in (("hidden size", h), ("intermediate size", i)):
        if size > W8A8_MAX_K:
            raise ValueError(f"{name} {size} exceeds {W8A8_MAX_K} (an int32 accumulator could overflow)")
    _check_scale("w13_scale", w13_scale, 2 * i, num_local, hidden_states.device)
    _check_scale("w2_scale", w2_scale, h, num_local, hidden_states.device)
    if m == 0:
        return shape
    dtype, rows = hidden_states.dtype, m * k
    return _W8A8Plan(
        shape,
        route_plan(m, k, shape.num_experts, num_local, expert_map is not None, write_counts=False),
        _quant_spec(h, dtype, rows, k, has_idx=True, gather=True),
        _gemm_spec(GEMM1_KERNEL, DEFAULT_W8A8_GEMM1_CONFIG, dtype, rows, i, h, num_local),
        # Only the kept rows (GEMM1 wrote nothing else).
        _quant_spec(i, dtype, rows, 1, has_idx=True, gather=False),
        _gemm_spec(GEMM2_KERNEL, DEFAULT_W8A8_GEMM2_CONFIG, dtype, rows, h, i, num_local),
        unpermute_spec(h, dtype, m, rows, k),
    )


def fused_experts_w8a8(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    expert_map: torch.Tensor | None = None,
    global_num_experts: int | None = None,
) -> torch.Tensor:
    """vLLM's W8A8 int8 MoE (channel-wise weights, dynamic per-token activations), on our kernels.

    Args:
        hidden_states: fp16/bf16/fp32 [M, H].
        w13: int8 [L, 2I, H], gate rows [0, I) then up rows [I, 2I) (vLLM's w13_weight).
        w2: int8 [L, H, I].
        w13_scale: fp32 [L, 2I, 1] or [L, 2I], one scale per output channel (fp16/bf16 are
            widened to fp32).
        w2_scale: fp32 [L, H, 1] or [L, H] (likewise).
        topk_weights: float [M, k].
        topk_ids: int32/int64 [M, k], global expert ids.
        activation: "silu" (gated SiLU) only.
        expert_map: optional int32/int64 [global_num_experts], global -> local id, -1 = not local.
        global_num_experts: E (default: expert_map's length, else L).

    Returns:
        out [M, H] in hidden_states' dtype (see the module docstring for the exact computation).

    Raises:
        TypeError: a tensor of the wrong dtype.
        ValueError: wrong shapes, devices or (with input checks on) out-of-range ids/map entries;
            a limit of `kernels.limits` exceeded.
    """
    key = experts_key(
        "fused_experts_w8a8", hidden_states, w13, w2, topk_weights, topk_ids, activation, expert_map,
        global_num_experts, w13_scale, w2_scale,
    )  # fmt: skip
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _plan_w8a8(
            hidden_states, w13, w2, w13_scale, w2_scale, topk_weights, topk_ids, activation, expert_map,
            global_num_experts,
        )  # fmt: skip
        if key is not None:
            _PLANS.put(key, plan)
    x, out, route = begin_experts(plan, hidden_states, topk_ids, expert_map)
    if route is None:  # no tokens
        return out
    _, offsets, inv_idx, permuted_idx = route
    dtype = x.dtype
    s13, s2 = _fp32_scale(w13_scale), _fp32_scale(w2_scale)
    weights = topk_weights.contiguous()
    if dtype is torch.bfloat16 or weights.dtype is torch.bfloat16:
        with bf16_shim() as shim:
            _w8a8_mlp(
                plan, shim.input(x), w13, w2, s13, s2, shim.input(weights), offsets, inv_idx,
                permuted_idx, shim.output(out), dtype,
            )  # fmt: skip
    else:
        _w8a8_mlp(plan, x, w13, w2, s13, s2, weights, offsets, inv_idx, permuted_idx, out, dtype)
    return out


def _w8a8_mlp(
    plan: _W8A8Plan,
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    s13: torch.Tensor,
    s2: torch.Tensor,
    weights: torch.Tensor,
    offsets: torch.Tensor,
    inv_idx: torch.Tensor,
    permuted_idx: torch.Tensor,
    out: torch.Tensor,
    dtype: torch.dtype,
) -> None:
    """Quant-gather, the two int8 GEMMs with the requant between them, and the combine, on
    contiguous (shimmed) activations; `dtype` is the caller's (the intermediates' rounding)."""
    shape = plan.shape
    rows = shape.num_tokens * shape.topk
    width = max(shape.hidden, shape.inter)
    # Buffers shared by consecutive steps of one stream: the int8 rows and their scales of the
    # second quant overwrite the first's (consumed by GEMM1), and GEMM2's outputs overwrite the
    # intermediate (consumed by the second quant).
    q_rows = w13.new_empty(rows * width)  # int8, as the weights
    q_scales = s13.new_empty(rows)  # fp32, as the scales
    f_rows = x.new_empty(rows * width)
    _launch_quant(plan.quant1, x, permuted_idx, q_rows, q_scales)
    _launch_gemm_spec(plan.gemm1, q_rows, q_scales, w13.contiguous(), s13, offsets, f_rows)
    _interpreted_rounding(f_rows, dtype)
    _launch_quant(plan.quant2, f_rows, permuted_idx, q_rows, q_scales)
    _launch_gemm_spec(plan.gemm2, q_rows, q_scales, w2.contiguous(), s2, offsets, f_rows)
    _interpreted_rounding(f_rows, dtype)
    launch_unpermute(plan.combine, f_rows, weights, inv_idx, out)
