"""Content-addressed artifact cache of lowered kernels.

One folder per lowering request, named by `LoweringRequest.cache_key()` (kernel module source,
signature, constexprs, compile options, SKU, triton-ascend version), under `VAT_CACHE_DIR`
(default `~/.cache/vllm-ascend-triton`): `meta.json` (stage, error, request), the IR files
and, where CANN is installed, the NPU binary (`kernel.npubin`; real code, untested here).
Entries are written to a temporary folder and renamed into place, so an interrupted run never
leaves a half-written entry. `vat compile` fills it; a second run finds every unchanged variant
here and lowers nothing. On an Ascend host the same run builds the NPU binaries first (untested
here: no CANN).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from vllm_ascend_triton.codegen.lower import LoweringRequest, LoweringResult

CACHE_DIR_ENV = "VAT_CACHE_DIR"
_FILES = {"ttir": "kernel.ttir", "ttadapter": "kernel.ttadapter"}
_BINARY = "kernel.npubin"  # written only where CANN built the binary (untested here)


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm-ascend-triton"


class ArtifactCache:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, request: LoweringRequest) -> Path:
        key = request.cache_key()
        return self.root / "lowered" / key[:2] / key

    def get(self, request: LoweringRequest) -> LoweringResult | None:
        entry = self.path(request)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            texts = {
                field: (entry / name).read_text() if (entry / name).is_file() else None
                for field, name in _FILES.items()
            }
        except (OSError, ValueError):
            return None  # missing or unreadable: lower again
        binary = entry / _BINARY
        return LoweringResult(
            request,
            meta["stage"],
            texts["ttir"],
            texts["ttadapter"],
            meta.get("error"),
            cached=True,
            npubin=binary.read_bytes() if binary.is_file() else None,
        )

    def put(self, result: LoweringResult) -> Path:
        entry = self.path(result.request)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            req = result.request
            meta = {
                "stage": result.stage,
                "error": result.error,
                "kernel": req.kernel,
                "name": req.label,
                "sku": req.sku,
                "signature": req.signature,
                "constants": {k: repr(v) for k, v in req.constants.items()},
                "options": {k: repr(v) for k, v in req.options.items()},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for field, name in _FILES.items():
                text = getattr(result, field)
                if text is not None:
                    (tmp / name).write_text(text)
            if result.npubin is not None:
                (tmp / _BINARY).write_bytes(result.npubin)
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return entry
