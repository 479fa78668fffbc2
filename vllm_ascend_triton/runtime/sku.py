"""The Ascend SKU table: what each chip offers a Triton-Ascend kernel.

Figures are sourced, not measured here (no NPU on the build machines):
- core counts and UB size: triton-ascend docs and runtime (`num_vectorcore = 2 * num_aicore` on
  A2/A3, 192 KB Unified Buffer per core), Ascend CATLASS arch tables (910B3: 20 AIC / 40 AIV),
  device maps of Kubernetes device plugins (910B1/B2/A3: 24 AIC);
- HBM size: Atlas A2/A3 product sheets; bandwidth and peak fp16 cube throughput: third-party
  figures, approximate (used only by cost models, always labelled "modelled").
On an NPU, the runtime prefers the core counts the driver reports (see `device.py`).
"""

from __future__ import annotations

import dataclasses

KIB = 1024
GIB = 1024**3


class UnknownSKUError(ValueError):
    """A SKU name that is not in the table."""


@dataclasses.dataclass(frozen=True)
class AscendSKU:
    name: str  # as torch_npu.npu.get_device_name() reports it
    family: str  # "Atlas A2", "Atlas A3", ...
    cube_cores: int  # AI Cube cores (AIC): run tl.dot kernels
    vector_cores: int  # AI Vector cores (AIV): run vector-only kernels
    ub_bytes: int  # Unified Buffer per core
    hbm_bytes: int
    hbm_bandwidth_gbps: float  # GB/s, approximate
    peak_fp16_tflops: float  # cube peak, approximate
    triton_supported: bool
    unsupported_reason: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _a2(name: str, cube: int, hbm_gib: int, bw: float, tflops: float) -> AscendSKU:
    return AscendSKU(name, "Atlas A2", cube, 2 * cube, 192 * KIB, hbm_gib * GIB, bw, tflops, True)


def _a3(name: str, cube: int) -> AscendSKU:
    return AscendSKU(name, "Atlas A3", cube, 2 * cube, 192 * KIB, 64 * GIB, 1600.0, 376.0, True)


SKUS: dict[str, AscendSKU] = {
    s.name: s
    for s in (
        _a2("Ascend910B1", 24, 64, 1600.0, 376.0),
        _a2("Ascend910B2", 24, 64, 1600.0, 376.0),
        _a2("Ascend910B3", 20, 64, 1600.0, 313.0),
        _a2("Ascend910B4", 20, 32, 800.0, 280.0),
        # A3 (one die of a 910_93 module). Other A3 variants may ship 20 cube cores.
        _a3("Ascend910_9392", 24),
        _a3("Ascend910_9382", 24),
        _a3("Ascend910_9372", 20),
        _a3("Ascend910_9362", 20),
        # Ascend 950PR (NPU arch 3510, "A5"): 28 cube / 56 vector cores and a 248 KB (253,952-byte)
        # Unified Buffer per CANN's platform config for Ascend950PR and asc-devkit's
        # GetRuntimeUBSize ("fixed 248KB" outside SIMD+SIMT mixing); 112 GiB of memory. HBM bandwidth
        # and cube peak are not sourced: A3's figures stand in for the cost model (modelled only).
        # triton-ascend 3.2 compiles this generation through a separate pipeline (its
        # `compile_on_910_95` path, targets Ascend910_95xx) that was not validated here, so it is a
        # planning SKU: grids and tiles can be planned for it, lowering is refused.
        AscendSKU(
            "Ascend950PR",
            "Ascend 950",
            28,
            56,
            253952,
            112 * GIB,
            1600.0,
            376.0,
            False,
            "planning only: triton-ascend 3.2's separate 910_95 compile pipeline was not validated by "
            "this project (no lowering, no tuned configs)",
        ),
        # 300I Duo inference card; vector count and UB size are uncertain in the sources.
        AscendSKU(
            "Ascend310P3",
            "Atlas 300I Duo",
            8,
            7,
            256 * KIB,
            24 * GIB,
            204.8,
            140.0,
            False,
            "triton-ascend targets Atlas A2/A3 (910B/910_93) only; the 310P has no backend in its "
            "compiler (bishengir) and no support in its runtime",
        ),
    )
}

DEFAULT_PLANNING_SKU = "Ascend910B3"


def get_sku(name: str) -> AscendSKU:
    """Look up a SKU by name (case-insensitive); an unknown name lists the known ones."""
    for known, sku in SKUS.items():
        if known.lower() == name.strip().lower():
            return sku
    raise UnknownSKUError(f"unknown Ascend SKU {name!r}; known SKUs: {', '.join(SKUS)}")


def supported_skus() -> list[str]:
    return [name for name, sku in SKUS.items() if sku.triton_supported]
