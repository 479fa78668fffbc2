#!/usr/bin/env python3
"""The whole measured `vat bench` on a fresh NVIDIA GPU machine: our Triton kernels (the same
bodies as on Ascend, run by upstream Triton through the `cuda` backend) against torch
implementations on the same GPU, over the real-model shapes.

Needs only torch, triton and numpy (rich and matplotlib are used when present): no venv build.

    PYTHONPATH=. python3 scripts/gpu_bench.py [--out out/gpu-bench] [--quick] [--budget-s 360]

Writes bench.csv, bench.json, bench.md (and bench.png with matplotlib) and prints the table. Stops
adding rows after --budget-s seconds (default 360, leaving two minutes of the 8 for the row in
flight, Triton's compiles and the outputs); skipped rows say so. Exit 0 when every row that ran
passed its check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out") / "gpu-bench")
    parser.add_argument("--quick", action="store_true", help="one model and a tiny batch per kernel")
    parser.add_argument("--kernels", nargs="+", default=None, help="only these kernels")
    parser.add_argument("--budget-s", type=float, default=360.0, help="stop adding rows after this")
    parser.add_argument("--sku", default="Ascend910B3", help="SKU of the modelled columns")
    parser.add_argument(
        "--backend", default="cuda", choices=("cuda", "interpreter"),
        help="cuda (default); interpreter only to try this script on a CPU",
    )  # fmt: skip
    args = parser.parse_args(argv)

    # The backend is chosen before any kernel module is imported (Triton decides at definition).
    os.environ["VAT_BACKEND"] = args.backend
    from vllm_ascend_triton.runtime.backend import select_backend

    select_backend(args.backend)
    if args.backend == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device visible to torch", file=sys.stderr)
            return 2

    from vllm_ascend_triton.bench.output import markdown_table, write_all
    from vllm_ascend_triton.bench.runner import failed_rows, run_bench

    started = time.perf_counter()

    def progress(label: str, done: int, total: int) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {done + 1}/{total} {label}", flush=True)

    result = run_bench(
        args.sku,
        kernels=args.kernels,
        quick=args.quick,
        lower=False,  # lowering needs triton-ascend, which this machine does not have
        on_progress=progress,
        deadline_s=args.budget_s,
    )
    paths = write_all(result, args.out)
    print()
    print(f"measured on {result['meta']['measured_on']}; modelled columns for {result['meta']['sku']}")
    print(markdown_table(result))
    for name, label in result["meta"]["labels"].items():
        print(f"- {name}: {label}")
    bad = failed_rows(result)
    for r in bad:
        print(
            f"error: {r['kernel']} {r['model']} T={r['tokens']}: {r.get('error') or 'error above tolerance'}"
        )
    print(f"{len(result['rows'])} rows, {len(bad)} failing, {time.perf_counter() - started:.0f} s; wrote "
          f"{', '.join(map(str, paths))}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
