"""Small kernels for the foundation's tests: one the interpreter and the Ascend adapter accept,
one triton-ascend rejects (tl.dot on fp64). Importable by the lowering subprocess."""

import triton
import triton.language as tl


@triton.jit
def scaled_add_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
    # Persistent loop: one program per core, blocks strided by the grid size.
    for block in range(tl.program_id(0), tl.cdiv(n, BLOCK), tl.num_programs(0)):
        offs = block * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, (x * alpha + y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fp64_dot_kernel(x_ptr, out_ptr, B: tl.constexpr):
    offs = tl.arange(0, B)
    tile = tl.load(x_ptr + offs[:, None] * B + offs[None, :])
    tl.store(out_ptr + offs[:, None] * B + offs[None, :], tl.dot(tile, tile))


@triton.jit
def double_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # Arithmetic in the storage dtype: the case the interpreter gets wrong for bf16.
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, x + x, mask=offs < n)


@triton.jit
def int_sums_kernel(x_ptr, sum_ptr, cumsum_ptr, max_ptr, B: tl.constexpr):
    offs = tl.arange(0, B)
    x = tl.load(x_ptr + offs)
    tl.store(sum_ptr, tl.sum(x, axis=0))
    tl.store(cumsum_ptr + offs, tl.cumsum(x, axis=0))
    tl.store(max_ptr, tl.max(x, axis=0))


@triton.jit
def row_max_kernel(x_ptr, out_ptr, R: tl.constexpr, C: tl.constexpr):
    rows = tl.arange(0, R)
    cols = tl.arange(0, C)
    tile = tl.load(x_ptr + rows[:, None] * C + cols[None, :])
    tl.store(out_ptr + rows, tl.max(tile, axis=1))
    tl.store(out_ptr + R + rows, tl.min(tile, axis=1))
