"""What the Ascend adapter IR says a kernel will cost on the chip (static, not measured).

- mix_mode: "aiv" = vector cores only; "aic"/"mix" = the cube cores are used (tl.dot).
- on-chip buffers: every `memref.alloc() : memref<AxBxf16>` is a Unified Buffer allocation; the
  sum is a lower bound of one program's UB use (the compiler may double it for multibuffering).
- discrete memory accesses: loads/stores whose addresses come from a tensor of indices are
  scalarized into loops marked {DiscreteMemAccess} / {ExtractedLoadOrStore}: slow on Ascend.
"""

from __future__ import annotations

import dataclasses
import re

_ELEMENT_BYTES = {"i1": 1, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8}
_ALLOC = re.compile(
    r"memref\.alloc\(\)(?:\s*\{[^}]*\})?\s*:\s*memref<((?:\d+x)*)(i1|i8|i16|i32|i64|bf16|f16|f32|f64)[,>]"
)
_MIX_MODE = re.compile(r'mix_mode\s*=\s*"(\w+)"')


@dataclasses.dataclass(frozen=True)
class StaticReport:
    mix_mode: str
    buffers: tuple[tuple[str, int], ...]  # (shape x dtype, bytes) per alloc
    ub_bytes: int  # sum of the allocs (single-buffered)
    discrete_accesses: int

    @property
    def uses_cube(self) -> bool:
        return self.mix_mode != "aiv"

    def fits_ub(self, ub_bytes: int, multibuffer: bool = True) -> bool:
        """Whether one program's buffers fit the UB; double buffering needs twice the space."""
        return self.ub_bytes * (2 if multibuffer else 1) <= ub_bytes

    def as_dict(self) -> dict:
        return {
            "mix_mode": self.mix_mode,
            "uses_cube": self.uses_cube,
            "ub_bytes": self.ub_bytes,
            "buffers": [{"type": t, "bytes": b} for t, b in self.buffers],
            "discrete_accesses": self.discrete_accesses,
        }


def parse_adapter_ir(ttadapter: str) -> StaticReport:
    mix = _MIX_MODE.search(ttadapter)
    buffers = []
    for dims, dtype in _ALLOC.findall(ttadapter):
        count = 1
        for d in filter(None, dims.split("x")):
            count *= int(d)
        buffers.append((dims + dtype, count * _ELEMENT_BYTES[dtype]))
    discrete = len(re.findall(r"DiscreteMemAccess", ttadapter))
    return StaticReport(
        mix_mode=mix.group(1) if mix else "unknown",
        buffers=tuple(buffers),
        ub_bytes=sum(b for _, b in buffers),
        discrete_accesses=discrete,
    )
