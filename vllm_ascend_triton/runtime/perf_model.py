"""A roofline cost model of one kernel launch on an Ascend SKU (modelled, never measured).

Used to rank tuning candidates where no NPU of the SKU is present, and by `vat bench` for its
modelled figures. Inputs: a `LaunchSpec` (grid, runtime arguments, constexprs, compile options)
and the SKU table (`runtime.sku`: cores, HBM bandwidth, fp16 cube peak). For one launch:

    memory_s   = HBM bytes / (bandwidth * min(1, programs / cores))
                 (bandwidth is shared by the cores: a launch on fewer cores gets their share)
    compute_s  = padded FLOPs / (peak * min(1, programs / cores))
                 (cube peak for tl.dot kernels; vector peak otherwise: cores * clock * lanes of
                 the dtype; padded = work on the masked lanes of partial tiles counts too)
    body_s     = max(memory_s, compute_s) with multibuffer (DMA overlaps compute), else their sum
    rounds     = ceil(programs / cores) (programs beyond the core count run in further rounds)
    serial_s   = rounds * tile iterations per program * PER_ITERATION_S (loop, scalar address
                 math, DMA issue latency of each tile: a tiny tile pays it many times)
    seconds    = LAUNCH_S + body_s + serial_s
    roofline_s = max(HBM bytes / bandwidth, FLOPs / peak)   (the ideal on the whole chip)

HBM bytes and FLOPs come from a traffic model per kernel name (`TRAFFIC_MODELS`, for kernels
whose access pattern we know) or a generic one: every distinct tensor argument moved once (indexed
storage such as a KV cache capped, see `generic_traffic`), one vector op per element, tiles of the
product of the BLOCK_*/TILE_* constexprs. Where the op's minimum traffic is known (the benchmark
workloads), `estimate_op` uses it for the roofline terms and the specs for the fixed costs.
The constants below
are assumptions (order-of-magnitude figures for Ascend 910B from public material, not measured
here); the model is for ranking candidates and is always labelled "model".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from vllm_ascend_triton.runtime.sku import AscendSKU

LAUNCH_S = 5e-6  # per kernel launch (host -> device submit and core start), assumed
PER_ITERATION_S = 0.4e-6  # per tile iteration of one program (DMA issue + loop overhead), assumed
VECTOR_CLOCK_HZ = 1.8e9  # AIV clock, approximate
VECTOR_BYTES_PER_CYCLE = 256  # one AIV vector instruction works on 256 bytes (128 fp16 / 64 fp32 lanes)
CUBE_FP32_FRACTION = 0.25  # fp32 tl.dot runs at about a quarter of the fp16 cube peak (assumed)
INDEXED_RATIO = 4  # generic model: a tensor this much larger than the next is indexed storage


@dataclasses.dataclass(frozen=True)
class Traffic:
    hbm_bytes: float  # bytes moved between HBM and the cores
    flops: float  # useful floating-point (or integer) operations
    padded_flops: float  # operations including the masked lanes of partial tiles
    iterations: float  # tile iterations, summed over all programs
    elem_bytes: int  # the data dtype's width (vector peak depends on it)


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    seconds: float
    hbm_bytes: float
    flops: float
    unit: str  # "cube" | "vector"
    programs: int
    cores: int
    rounds: int
    iterations_per_program: float
    memory_s: float
    compute_s: float
    serial_s: float
    roofline_s: float
    method: str = "model"

    @property
    def share_of_roofline(self) -> float:
        return self.roofline_s / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "share_of_roofline": self.share_of_roofline}


def vector_peak_flops(sku: AscendSKU, elem_bytes: int) -> float:
    """Vector-unit ops/s of the whole chip for a dtype width."""
    lanes = VECTOR_BYTES_PER_CYCLE // max(1, elem_bytes)
    return sku.vector_cores * VECTOR_CLOCK_HZ * lanes


def cube_peak_flops(sku: AscendSKU, elem_bytes: int) -> float:
    peak = sku.peak_fp16_tflops * 1e12
    return peak * CUBE_FP32_FRACTION if elem_bytes >= 4 else peak


def _tensors(args: Mapping[str, Any]) -> list[torch.Tensor]:
    seen: dict[tuple[int, int], torch.Tensor] = {}
    for value in args.values():
        if isinstance(value, torch.Tensor):
            key = (
                (value.untyped_storage().data_ptr(), value.storage_offset())
                if value.numel()
                else (id(value), 0)
            )
            seen.setdefault(key, value)
    return list(seen.values())


def _tile_elements(constexprs: Mapping[str, Any]) -> int:
    """Product of the BLOCK_*/TILE_* constexprs times the widest *_PAD one (a padded row length)."""
    tile, pad = 1, 1
    for name, value in constexprs.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if name.upper().startswith(("BLOCK", "TILE")):
            tile *= max(1, value)
        elif name.upper().endswith("_PAD"):
            pad = max(pad, value)
    return tile * pad


def generic_traffic(spec: Any) -> Traffic:
    """Every distinct tensor argument moved once, one op per element, iterations = elements / tile
    elements. Tensors more than INDEXED_RATIO times larger than the largest of the others are taken
    for indexed storage (KV caches, a cos/sin table) of which only a part is touched: each counts as
    INDEXED_RATIO times that one."""
    tensors = _tensors(spec.args)
    largest = max((t.numel() for t in tensors), default=0)
    smaller = [t.numel() for t in tensors if t.numel() * INDEXED_RATIO < largest]
    cap = INDEXED_RATIO * max(smaller) if smaller else math.inf
    counted = [(min(t.numel(), cap), t.element_size()) for t in tensors]
    nbytes = float(sum(n * size for n, size in counted))
    elems = float(sum(n for n, _ in counted))
    widths = [t.element_size() for t in tensors if t.is_floating_point()]
    elem_bytes = max(widths) if widths else 4
    tile = _tile_elements(spec.constexprs)
    iterations = max(1.0, math.ceil(elems / tile))
    padded = iterations * tile
    return Traffic(nbytes, elems, max(elems, padded), iterations, elem_bytes)


def _rope_traffic(spec: Any) -> Traffic:
    """rope / mrope: each query and key head's rotated dims read and written, one cos/sin row per
    token; 3 ops per rotated element (2 multiplies, 1 add); tiles of BLOCK_H heads x HALF_PAD pairs."""
    a, c = spec.args, spec.constexprs
    tokens = int(a["num_tokens"])
    heads = int(a["num_q_heads"]) + (int(a["num_k_heads"]) if c.get("HAS_KEY", True) else 0)
    elem = a["q_ptr"].element_size()
    cache_elem = a["cache_ptr"].element_size()
    rot = 2 * int(c["HALF_ROT"])
    block_h, half_pad = int(c["BLOCK_H"]), int(c["HALF_PAD"])
    pos_reads = 3 if spec.name == "mrope" else (2 if c.get("HAS_OFFSETS") else 1)
    hbm = tokens * (heads * rot * elem * 2 + rot * cache_elem + pos_reads * 8)
    flops = tokens * heads * rot * 3.0
    q_tiles = math.ceil(int(a["num_q_heads"]) / block_h)
    k_tiles = math.ceil(int(a["num_k_heads"]) / block_h) if c.get("HAS_KEY", True) else 0
    tiles = tokens * (q_tiles + k_tiles)
    padded = tiles * block_h * half_pad * 2 * 3.0
    return Traffic(float(hbm), flops, max(flops, padded), float(tiles), elem)


def _cache_write_traffic(spec: Any) -> Traffic:
    """reshape_and_cache: per token, its key and value heads read once and written into their cache
    slot (a copy: one op per element), in tiles of BLOCK_H heads x HEAD_PAD dims; one slot id read."""
    a, c = spec.args, spec.constexprs
    tokens, heads = int(a["num_tokens"]), int(a["num_heads"])
    elem = a["key_ptr"].element_size()
    cache_elem = a["kc_ptr"].element_size()
    dims = int(c["HEAD_SIZE"])
    block_h, head_pad = int(c["BLOCK_H"]), int(c["HEAD_PAD"])
    hbm = tokens * (2 * heads * dims * (elem + cache_elem) + 8)
    tiles = tokens * math.ceil(heads / block_h)
    flops = 2.0 * tokens * heads * dims
    padded = 2.0 * tiles * block_h * head_pad
    return Traffic(float(hbm), flops, max(flops, padded), float(tiles), max(elem, cache_elem))


TRAFFIC_MODELS: dict[str, Callable[[Any], Traffic]] = {
    "rope": _rope_traffic,
    "mrope": _rope_traffic,
    "reshape_and_cache": _cache_write_traffic,
}


def traffic(spec: Any) -> Traffic:
    model = TRAFFIC_MODELS.get(spec.name)
    if model is not None:
        try:
            return model(spec)
        except (KeyError, TypeError, AttributeError):  # a kernel whose arguments changed: stay generic
            pass
    return generic_traffic(spec)


def estimate_spec(spec: Any, sku: AscendSKU) -> CostEstimate:
    """Modelled time of one launch (see the module docstring)."""
    t = traffic(spec)
    unit = "cube" if spec.uses_cube else "vector"
    cores = sku.cube_cores if spec.uses_cube else sku.vector_cores
    programs = int(math.prod(spec.grid))
    busy = min(1.0, programs / cores)
    peak = cube_peak_flops(sku, t.elem_bytes) if spec.uses_cube else vector_peak_flops(sku, t.elem_bytes)
    bandwidth = sku.hbm_bandwidth_gbps * 1e9
    memory_s = t.hbm_bytes / (bandwidth * busy)
    compute_s = t.padded_flops / (peak * busy)
    multibuffer = bool(spec.options.get("multibuffer", True))  # triton-ascend's default: on
    body_s = max(memory_s, compute_s) if multibuffer else memory_s + compute_s
    rounds = max(1, math.ceil(programs / cores))
    per_program = t.iterations / programs
    serial_s = rounds * per_program * PER_ITERATION_S
    seconds = LAUNCH_S + body_s + serial_s
    roofline_s = max(t.hbm_bytes / bandwidth, t.flops / peak)
    return CostEstimate(
        seconds, t.hbm_bytes, t.flops, unit, programs, cores, rounds, per_program,
        memory_s, compute_s, serial_s, roofline_s,
    )  # fmt: skip


def estimate_specs(specs: Iterable[Any], sku: AscendSKU) -> CostEstimate:
    """Sum over the launches of one host-API call."""
    parts = [estimate_spec(s, sku) for s in specs]
    if not parts:
        raise ValueError("estimate_specs needs at least one launch spec")
    return CostEstimate(
        seconds=sum(p.seconds for p in parts),
        hbm_bytes=sum(p.hbm_bytes for p in parts),
        flops=sum(p.flops for p in parts),
        unit="cube" if any(p.unit == "cube" for p in parts) else "vector",
        programs=max(p.programs for p in parts),
        cores=max(p.cores for p in parts),
        rounds=max(p.rounds for p in parts),
        iterations_per_program=sum(p.iterations_per_program for p in parts),
        memory_s=sum(p.memory_s for p in parts),
        compute_s=sum(p.compute_s for p in parts),
        serial_s=sum(p.serial_s for p in parts),
        roofline_s=sum(p.roofline_s for p in parts),
    )


def estimate_op(specs: Sequence[Any], sku: AscendSKU, hbm_bytes: float, flops: float) -> CostEstimate:
    """Modelled time of one host-API call whose minimum traffic and useful work are known (the
    benchmark workloads know them): the roofline of the op's bytes and FLOPs on the whole chip,
    plus each launch's fixed cost and serial tile-iteration cost from the spec model."""
    parts = [estimate_spec(s, sku) for s in specs]
    if not parts:
        raise ValueError("estimate_op needs at least one launch spec")
    heaviest = max(parts, key=lambda p: p.memory_s + p.compute_s)
    elem = min((traffic(s).elem_bytes for s in specs), default=2)
    peak = cube_peak_flops(sku, elem) if heaviest.unit == "cube" else vector_peak_flops(sku, elem)
    busy = min(1.0, heaviest.programs / heaviest.cores)
    memory_s = hbm_bytes / (sku.hbm_bandwidth_gbps * 1e9 * busy)
    compute_s = flops / (peak * busy)
    serial_s = sum(p.serial_s for p in parts)
    seconds = len(parts) * LAUNCH_S + max(memory_s, compute_s) + serial_s
    roofline_s = max(hbm_bytes / (sku.hbm_bandwidth_gbps * 1e9), flops / peak)
    return CostEstimate(
        seconds, hbm_bytes, flops, heaviest.unit, max(p.programs for p in parts), heaviest.cores,
        max(p.rounds for p in parts), sum(p.iterations_per_program for p in parts),
        memory_s, compute_s, serial_s, roofline_s,
    )  # fmt: skip
