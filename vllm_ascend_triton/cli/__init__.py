"""`vat`: the command line of vllm-ascend-triton.

Subcommands register themselves from their own packages (`register(subparsers)`), so this file
only wires them together. Every subcommand supports `--json` and exits 0 only on success.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vllm_ascend_triton.runtime.backend import (
    Backend,
    BackendNotSelectedError,
    decide_backend,
    select_backend,
)
from vllm_ascend_triton.runtime.jsonsafe import json_safe
from vllm_ascend_triton.runtime.sku import UnknownSKUError

# Modules that provide `register(subparsers)` for their subcommands, in `vat --help` order.
SUBCOMMAND_MODULES = (
    "vllm_ascend_triton.cli.info",
    "vllm_ascend_triton.cli.check",
    "vllm_ascend_triton.cli.compile",
    "vllm_ascend_triton.cli.tune",
    "vllm_ascend_triton.cli.bench",
    "vllm_ascend_triton.cli.sim",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vat",
        description="vllm-ascend-triton: Triton-Ascend kernels, lowering, tuning, benchmarks and "
        "a DP-balanced scheduler for vLLM on Ascend NPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """For subcommands that run kernels: which backend they run on."""
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default=None,
        help="execution backend (default: VAT_BACKEND, else npu on an NPU host, else the interpreter)",
    )


def select_kernel_backend(args: argparse.Namespace) -> Backend:
    """A subcommand that runs kernels chooses the backend before any kernel module is imported:
    the one asked for, else the environment's or the NPU, else Triton's interpreter on the CPU."""
    return select_backend(getattr(args, "backend", None) or decide_backend() or Backend.INTERPRETER)


def console(stderr: bool = False) -> Console:
    """Rich console for tables; wide when piped (a log file should not fold kernel names)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def progress_bar(command: str, disable: bool) -> Progress:
    """The progress bar of long `vat` commands (on stderr; gone when the work is done)."""
    return Progress(
        TextColumn(f"[bold]vat {command}[/bold] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        disable=disable,
        transient=True,
    )


def emit_json(payload: object) -> None:
    json.dump(json_safe(payload), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (UnknownSKUError, ValueError, BackendNotSelectedError) as exc:
        # A user's mistake (an unknown SKU in VAT_SKU or --sku, a bad flag value): one line, exit 2.
        print(f"vat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `vat ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
