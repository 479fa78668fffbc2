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

import logging

import torch
import triton

from vllm_ascend_triton.kernels.fused_moe import (
    ACTIVATIONS,
    _check_int32_extent,
    _check_routing,
    _launch_unpermute,
    _num_local,
    _route,
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
from vllm_ascend_triton.runtime.configs import ShapeCache, lookup_config
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
# Launch decisions per shape (configs, grids): computed once, not per call.
_PLANS = ShapeCache("fused_moe_w8a8")


def _dtype_key(dtype: torch.dtype) -> str:
    # The config files' spelling of a dtype: "float16" (no "torch." prefix).
    return str(dtype).removeprefix("torch.")


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
        current_device().sku.name, kernel, {"n": n_out, "k": k_dim, "dtype": _dtype_key(dtype)}, base
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
        current_device().sku.name, QUANT_KERNEL, {"hidden": hidden, "dtype": _dtype_key(dtype)}, default
    )
    cfg["BLOCK_H"] = min(cfg["BLOCK_H"], max(32, triton.next_power_of_2(hidden)))
    return cfg


def _launch_quant(
    src: torch.Tensor,
    idx: torch.Tensor | None,
    q: torch.Tensor,
    scale: torch.Tensor,
    topk: int,
    dtype: torch.dtype,
    gather: bool = False,
) -> None:
    num_rows, hidden = q.shape
    plan_key = (QUANT_KERNEL, hidden, dtype, num_rows)
    plan = _PLANS.get(plan_key)
    if plan is None:
        plan = _PLANS.put(plan_key, (_quant_config(hidden, dtype), persistent_grid(num_rows)))
    cfg, grid = plan
    LaunchSpec(
        name=QUANT_KERNEL,
        kernel=_per_token_quant_kernel,
        grid=grid,
        args=dict(
            src_ptr=src, idx_ptr=idx if idx is not None else scale, q_ptr=q, scale_ptr=scale,
            num_rows=num_rows, hidden=hidden, topk=topk,
        ),
        constexprs=dict(HAS_IDX=idx is not None, GATHER=gather, BLOCK_H=cfg["BLOCK_H"]),
        config=cfg,
    ).launch()  # fmt: skip


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
        with bf16_shim() as shim:
            src = shim.input(x.reshape(rows, hidden).contiguous())
            _launch_quant(src, None, q.view(rows, hidden), scale, 1, x.dtype)
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
    # epilogue multiplies in fp32.
    return scale.reshape(num_local, rows).to(torch.float32).contiguous()


def _interpreted_rounding(t: torch.Tensor, dtype: torch.dtype) -> None:
    """On the interpreter the bf16 shim computes in fp32; the intermediate results that vLLM rounds
    to bf16 are rounded here on purpose, so the interpreter computes what the NPU does."""
    if t.dtype != dtype and current_backend() is Backend.INTERPRETER:
        t.copy_(t.to(dtype))


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
    num_rows, k_dim = a.shape
    n_out = c.shape[1]
    num_local = b.shape[0]
    gated = kernel == GEMM1_KERNEL
    plan_key = (kernel, n_out, k_dim, dtype, num_rows, num_local)
    plan = _PLANS.get(plan_key)
    if plan is None:
        cfg = _gemm_config(kernel, n_out, k_dim, dtype, default)
        # Row tiles bounded without reading the counts: each expert adds at most one partial tile.
        max_row_tiles = triton.cdiv(num_rows, cfg["BLOCK_M"]) + min(num_local, num_rows)
        work = max_row_tiles * triton.cdiv(n_out, cfg["BLOCK_N"])
        plan = _PLANS.put(plan_key, (cfg, max_row_tiles, persistent_grid(work, uses_cube=True)))
    cfg, max_row_tiles, grid = plan
    LaunchSpec(
        name=kernel,
        kernel=_w8a8_grouped_gemm_kernel,
        grid=grid,
        args=dict(
            a_ptr=a, a_scale_ptr=a_scale, b_ptr=b, b_scale_ptr=b_scale, offsets_ptr=offsets, c_ptr=c,
            n_out=n_out, k_dim=k_dim, num_local=num_local, max_row_tiles=max_row_tiles,
        ),
        constexprs=dict(
            GATED=gated, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            BLOCK_E=max(16, triton.next_power_of_2(num_local)),
        ),
        config=cfg,
        uses_cube=True,
    ).launch()  # fmt: skip


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
    check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("w13", w13, dtypes=(torch.int8,), ndim=3)
    check_tensor("w2", w2, dtypes=(torch.int8,), ndim=3)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    num_local, two_i, hidden = w13.shape
    if hidden_states.shape[1] != hidden:
        raise ValueError(
            f"hidden_states must have {hidden} columns (w13 is {tuple(w13.shape)}), "
            f"got shape {tuple(hidden_states.shape)}"
        )
    if two_i % 2 or two_i == 0 or hidden == 0:
        raise ValueError(
            f"w13 must be [L, 2 * intermediate_size, hidden] with both > 0, got shape {tuple(w13.shape)}"
        )
    inter = two_i // 2
    if w2.shape != (num_local, hidden, inter):
        raise ValueError(
            f"w2 must have shape {(num_local, hidden, inter)} to match w13 {tuple(w13.shape)}, "
            f"got {tuple(w2.shape)}"
        )
    for name, k in (("hidden size", hidden), ("intermediate size", inter)):
        if k > W8A8_MAX_K:
            raise ValueError(f"{name} {k} exceeds {W8A8_MAX_K} (an int32 accumulator could overflow)")
    device = hidden_states.device
    for name, t in (("w13", w13), ("w2", w2)):
        if t.device != device:
            raise ValueError(f"{name} must be on {device}, got {t.device}")
    s13 = _check_scale("w13_scale", w13_scale, two_i, num_local, device)
    s2 = _check_scale("w2_scale", w2_scale, hidden, num_local, device)
    if global_num_experts is None:
        global_num_experts = expert_map.shape[0] if isinstance(expert_map, torch.Tensor) else num_local
    _check_routing(hidden_states, topk_ids, global_num_experts, expert_map, topk_weights)
    if expert_map is None and global_num_experts != num_local:
        raise ValueError(
            f"without an expert_map, global_num_experts ({global_num_experts}) must equal "
            f"w13's expert count ({num_local})"
        )
    if expert_map is not None:
        _num_local(global_num_experts, expert_map, num_local)
    _check_int32_extent("w13 per expert", two_i, hidden)
    num_tokens, topk = topk_ids.shape
    num_slots = num_tokens * topk
    dtype = hidden_states.dtype

    out = torch.empty(num_tokens, hidden, dtype=dtype, device=device)
    if num_tokens == 0:
        return out
    _, offsets, inv_idx, permuted_idx = _route(topk_ids, expert_map, global_num_experts, num_local)
    with bf16_shim() as shim:
        x = shim.input(hidden_states.contiguous())
        weights = shim.input(topk_weights.contiguous())
        work_dtype = x.dtype
        xq = torch.empty(num_slots, hidden, dtype=torch.int8, device=device)
        xs = torch.empty(num_slots, dtype=torch.float32, device=device)
        _launch_quant(x, permuted_idx, xq, xs, topk, dtype, gather=True)
        act = torch.empty(num_slots, inter, dtype=work_dtype, device=device)
        _launch_gemm(
            xq, xs, w13.contiguous(), s13, offsets, act, GEMM1_KERNEL, DEFAULT_W8A8_GEMM1_CONFIG, dtype
        )
        _interpreted_rounding(act, dtype)
        aq = torch.empty(num_slots, inter, dtype=torch.int8, device=device)
        as_ = torch.empty(num_slots, dtype=torch.float32, device=device)
        # Only the kept rows (GEMM1 wrote nothing else).
        _launch_quant(act, permuted_idx, aq, as_, 1, dtype)
        y = torch.empty(num_slots, hidden, dtype=work_dtype, device=device)
        _launch_gemm(aq, as_, w2.contiguous(), s2, offsets, y, GEMM2_KERNEL, DEFAULT_W8A8_GEMM2_CONFIG, dtype)
        _interpreted_rounding(y, dtype)
        _launch_unpermute(y, weights, inv_idx, shim.output(out), dtype)
    return out
