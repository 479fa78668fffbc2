"""Input validation shared by the host wrappers: errors name the argument and what was expected."""

from __future__ import annotations

from collections.abc import Collection

import torch

from vllm_ascend_triton.runtime.backend import npu_visible
from vllm_ascend_triton.runtime.launch import expected_device_type

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Tensor attributes that answer "is it on this device type" faster than `t.device.type`.
_ON_DEVICE = {"cpu": "is_cpu", "cuda": "is_cuda"}
INDEX_DTYPES = (torch.int32, torch.int64)


def _dtype_names(dtypes: Collection[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    name: str,
    t: object,
    *,
    dtypes: Collection[torch.dtype] | None = None,
    ndim: int | Collection[int] | None = None,
    device_type: str | None = None,
) -> torch.Tensor:
    """`t` is a tensor of an allowed dtype and rank on this backend's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    if ndim is not None:
        dims = t.dim()
        if dims != ndim if isinstance(ndim, int) else dims not in ndim:
            allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(t.shape)}"
            )
    want = device_type or expected_device_type()
    flag = _ON_DEVICE.get(want)
    if flag is not None and getattr(t, flag):  # the common case, without building t.device
        return t
    if want == "npu" and not npu_visible():
        raise RuntimeError(
            "the npu backend (VAT_BACKEND=npu) needs torch_npu and a visible Ascend NPU (/dev/davinci*), "
            "and this host has none; set VAT_BACKEND=interpreter to run kernels in Triton's interpreter "
            "on the CPU"
        )
    if t.device.type != want:
        raise ValueError(f"{name} must be on a {want} device for this backend, got {t.device}")
    return t


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    """Kernels address the last dim with unit stride (other dims may be strided views)."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim, got strides {tuple(t.stride())}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors (None entries are skipped) live on one device."""
    first = None
    for t in tensors.values():
        if t is None:
            continue
        if first is None:
            first = t.device
        elif t.device != first:
            devices = {name: t.device for name, t in tensors.items() if t is not None}
            raise ValueError(f"tensors must share one device, got {devices}")


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
