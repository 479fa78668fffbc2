"""Child process of `codegen.lower`: reads requests as JSON on stdin, compiles each with
triton-ascend, answers with one JSON line on stdout. Not for direct use."""

from __future__ import annotations

import base64
import contextlib
import glob
import importlib
import json
import os
import sys
import traceback

# Messages of the last stage (bishengir, part of CANN) when CANN is absent: the adapter IR exists.
MISSING_CANN_MARKERS = ("ASCEND_HOME_PATH is not set", "bishengir-compile")


def _read_ir(cache_dir: str, suffix: str, binary: bool = False) -> str | bytes | None:
    files = glob.glob(os.path.join(cache_dir, "**", f"*{suffix}"), recursive=True)
    if not files:
        return None
    with open(max(files, key=os.path.getmtime), "rb" if binary else "r") as f:
        return f.read()


def _lower_one(req: dict, cache_dir: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module_name, kernel_name = req["kernel"].split(":")
    jit_fn = getattr(importlib.import_module(module_name), kernel_name)
    signature = dict(req["signature"])
    for name in req["constants"]:
        signature[name] = "constexpr"
    # A fresh cache folder per request: its IR files are this request's and nothing else's.
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    stage, error = "binary", None
    try:
        # Compiler diagnostics go to stdout; keep stdout for our answer.
        with contextlib.redirect_stdout(sys.stderr):
            triton.compile(
                ASTSource(fn=jit_fn, signature=signature, constants=req["constants"]),
                target=GPUTarget("npu", req["sku"], 0),
                options=req.get("options") or None,
            )
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if any(marker in text for marker in MISSING_CANN_MARKERS):
            stage = "adapter"
        else:
            stage, error = "failed", text.strip() or traceback.format_exc()
    ttir = _read_ir(cache_dir, ".ttir")
    ttadapter = _read_ir(cache_dir, ".ttadapter")
    if stage == "adapter" and ttadapter is None:
        stage, error = "failed", "compiler stopped before the Ascend adapter produced its IR"
    # With CANN, triton-ascend's last stage writes the NPU binary ("npubin"); untested here.
    npubin = _read_ir(cache_dir, ".npubin", binary=True) if stage == "binary" else None
    return {
        "stage": stage,
        "ttir": ttir,
        "ttadapter": ttadapter if stage != "failed" else None,
        "error": error,
        "npubin_b64": base64.b64encode(npubin).decode() if npubin else None,
    }


def main() -> None:
    requests = json.load(sys.stdin)
    cache_root = os.environ["TRITON_CACHE_DIR"]
    answers = []
    for i, req in enumerate(requests):
        try:
            answers.append(_lower_one(req, os.path.join(cache_root, str(i))))
        except Exception:
            answers.append(
                {"stage": "failed", "ttir": None, "ttadapter": None, "error": traceback.format_exc()}
            )
    sys.stdout.write("\n" + json.dumps(answers) + "\n")


if __name__ == "__main__":
    main()
