"""Two fixes to Triton's interpreter (as shipped in triton-ascend 3.2), applied when this process
selects the interpreter backend (`backend.select_backend`), never at import time.

1. Integer sums and prefix sums keep their dtype. The interpreter reduces with numpy, which
   widens int32 to int64 while the Triton tensor still says int32; a later `tl.store` then
   writes 8 bytes per element, past the end of the output (seen as heap corruption and
   "free(): invalid next size" crashes). A `.to(tl.int32)` does not help: the tensor already
   claims that type. On the NPU these ops keep their dtype, so the fix makes the interpreter
   agree with the hardware.
2. triton-ascend replaces `tl.max`/`tl.min` with its own combine functions, which the
   interpreter does not recognise, so it reduces element by element in Python (~0.1 ms per
   element). They are mapped to the numpy reductions the interpreter already uses for
   upstream's functions: `np.maximum`/`np.minimum` folded over the axis, exactly what the
   slow path computes (the interpreter implements `tl.maximum` with np.maximum), only faster.

Both are plain method replacements on the interpreter's reduce/scan op classes, installed once.
"""

from __future__ import annotations

import functools

import numpy as np


def _sum_keep_dtype(self, input):  # noqa: A002  (the interpreter's own signature)
    data = input.handle.data
    return self.to_tensor(
        np.sum(data, axis=self.axis, keepdims=self.keep_dims, dtype=data.dtype), input.dtype
    )


def _cumsum_keep_dtype(self, input):  # noqa: A002
    data = input.handle.data
    return [self.to_tensor(np.cumsum(data, axis=self.axis, dtype=data.dtype), dtype=input.dtype)]


@functools.lru_cache(maxsize=1)
def patch_triton_interpreter() -> None:
    from triton.runtime import interpreter

    interpreter.ReduceOps.sum = _sum_keep_dtype
    interpreter.ScanOps.cumsum = _cumsum_keep_dtype

    try:
        from triton.triton_patch.language import standard as ascend_standard
    except ImportError:  # upstream triton: its max/min already take the fast path
        return
    fast = {
        getattr(ascend_standard, name): reduce_op
        for name, reduce_op in (
            ("_elementwise_max_default", np.max),
            ("_elementwise_max_propagate_nan", np.max),
            ("_elementwise_min", np.min),
        )
        if hasattr(ascend_standard, name)
    }
    generic_apply = interpreter.ReduceOps.apply_impl

    def apply_impl(self, input):  # noqa: A002
        reduce_op = fast.get(self.combine_fn)
        if reduce_op is not None:
            return self.min_max(input[0], val_reduce_op=reduce_op, idx_reduce_op=None)
        return generic_apply(self, input)

    interpreter.ReduceOps.apply_impl = apply_impl
