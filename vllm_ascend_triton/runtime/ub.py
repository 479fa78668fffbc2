"""Tile budgets from the Unified Buffer (UB) of the SKU a kernel is planned for.

On Ascend every live tile of one program sits in its core's UB (192 KB on Atlas A2/A3, 256 KB on
Ascend 950), and triton-ascend double-buffers loads by default ("multibuffer"), so a program's
tiles get about half of it. Kernels size their tiles with this helper instead of hand constants,
so a SKU with a different UB changes the chosen tiles (in the spirit of Liger-Kernel's Ascend
`ub_manager`). The adapter IR of every variant is checked against the same budget by
`vat compile` (`codegen.report`).
"""

from __future__ import annotations

import torch

from vllm_ascend_triton.runtime.device import DeviceInfo, current_device

# Fraction of the UB left to a kernel's own tiles: the compiler keeps scratch of its own
# (reduction temporaries, masks, index vectors). Sourced rule of thumb from triton-ascend's docs
# ("about half of it with the default double buffering"), with headroom.
_USABLE_FRACTION = 0.75


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of `dtype`."""
    return dtype.itemsize


def ub_budget_bytes(device: DeviceInfo | None = None, multibuffer: bool = True) -> int:
    """Bytes one program's live tiles may use on this device's UB."""
    ub = (device or current_device()).ub_bytes
    return int(ub * _USABLE_FRACTION) // (2 if multibuffer else 1)


def tile_elements(
    live_tiles: float,
    elem_bytes: int,
    device: DeviceInfo | None = None,
    multibuffer: bool = True,
    fixed_bytes: int = 0,
) -> int:
    """Largest power-of-two element count per tile such that `live_tiles` tiles of `elem_bytes`
    each (plus `fixed_bytes` of other buffers) fit the UB budget. At least 1."""
    if live_tiles <= 0 or elem_bytes <= 0:
        raise ValueError(f"live_tiles and elem_bytes must be positive, got {live_tiles}, {elem_bytes}")
    room = ub_budget_bytes(device, multibuffer) - fixed_bytes
    elems = int(room // (live_tiles * elem_bytes))
    return 1 << max(0, elems.bit_length() - 1) if elems >= 1 else 1


def fits_ub(buffer_bytes: int, ub_bytes: int, multibuffer: bool = True) -> bool:
    """Whether buffers of `buffer_bytes` (single-buffered, as the adapter IR allocates them) fit a UB
    of `ub_bytes` once double buffering doubles them."""
    return buffer_bytes * (2 if multibuffer else 1) <= ub_bytes
