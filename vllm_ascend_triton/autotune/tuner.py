"""`vat tune` as a library: choose each kernel's launch config per (SKU, shape) and write the
config files the runtime reads (`runtime.configs`).

How one SKU is tuned:
1. Cases: the representative calls of every family with a `variants` module (what `vat compile`
   lowers) plus, from the real-model shapes file, one call per (op, model, batch size).
2. Plan: each case runs as a dry run planned for the SKU (`plan_for`, `record_launches(execute=
   False)`) with tuned files ignored, recording every config lookup: each distinct (kernel, key)
   looked up is one tuning item (its cases are every case that looked it up).
3. Candidates (`spaces.candidates`) are applied through the host APIs themselves: the same dry run
   with `override_configs({kernel: candidate})`. A candidate the host API rejects (ValueError or
   TypeError) is dropped; candidates that build identical launch specs count once.
4. Ranking: by the roofline model (`runtime.perf_model`) of every launch of every case, or, where this
   process runs on an NPU of that very SKU, by `triton.testing.do_bench` of the real calls
   (`method="measured"`; asking for it anywhere else raises MeasurementUnavailableError).
5. Pruning by the codegen report: the best candidates are lowered (through the artifact cache;
   the first-ranked of every item in one batch, then the next for items whose first failed) until
   one lowers and fits the SKU's Unified Buffer. An item with no such candidate gets no entry.
6. Files: one per (SKU, kernel, shape key), written atomically (temporary file + rename); an entry
   measured before is never replaced by a modelled one. A journal per SKU records every finished
   item, so an interrupted run continues where it stopped (`resume=True`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vllm_ascend_triton.autotune import spaces
from vllm_ascend_triton.codegen.cache import ArtifactCache
from vllm_ascend_triton.codegen.compile import report_row
from vllm_ascend_triton.codegen.lower import LoweringRequest, lower_many, triton_ascend_version
from vllm_ascend_triton.kernels import FAMILIES
from vllm_ascend_triton.kernels._variants import Variant, VariantSpec, device, family_variants
from vllm_ascend_triton.runtime import configs, perf_model
from vllm_ascend_triton.runtime.backend import Backend, current_backend
from vllm_ascend_triton.runtime.device import current_device, plan_for
from vllm_ascend_triton.runtime.launch import LaunchSpec, record_launches
from vllm_ascend_triton.runtime.sku import get_sku
from vllm_ascend_triton.workloads.ops import workloads
from vllm_ascend_triton.workloads.shapes import ShapeSet

logger = logging.getLogger(__name__)

METHODS = ("auto", "model", "measured")
JOURNAL_NAME = ".vat-tune-journal.jsonl"
MEASURE_TOP = 4  # candidates timed per item on a device (after pruning)
MODEL_TIE = 0.02  # modelled gains under 2% of the default's time are not trusted (the model is coarse)
# Attention inputs grow with the batch (a paged cache per sequence) but its key does not: tune it
# at small batches only.
_SMALL_BATCH_OPS = {"unified_attention": 64, "reshape_and_cache": 64}


class MeasurementUnavailableError(ValueError):
    """`measured` was asked for where no NPU of the SKU can time the kernels."""


@dataclasses.dataclass(frozen=True)
class TuneCase:
    label: str
    family: str
    call: Callable[[], object]  # the public host API call (dry-run to build specs)
    origin: str  # "variant" | "shapes"
    prepare: Callable[[], Callable[[], object]] | None = None  # inputs once, then a timed call
    dry: Callable[[], Callable[[], object]] | None = None  # uninitialised inputs once, then calls


@dataclasses.dataclass
class _Item:
    kernel: str
    key: dict[str, Any]
    defaults: list[dict[str, Any]]
    cases: list[TuneCase]

    @property
    def item_id(self) -> str:
        payload = json.dumps(
            [self.kernel, self.key, sorted(c.label for c in self.cases)], sort_keys=True, default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclasses.dataclass
class _Candidate:
    config: dict[str, Any]
    specs: list[list[LaunchSpec]]  # per case
    modelled_s: float
    measured_s: float | None = None
    verdict: str | None = None  # None (not lowered yet), "ok", or why it was pruned
    ub_bytes: int | None = None


def measurement_available(sku: str) -> bool:
    """True only in a process running compiled kernels on an NPU of this very SKU."""
    try:
        if current_backend() is not Backend.NPU:
            return False
    except Exception:
        return False
    dev = current_device()
    return dev.source == "npu" and dev.sku.name == get_sku(sku).name


# ---------------------------------------------------------------------------------------------------
# Cases and items


def _has_variants(family: str) -> bool:
    try:
        family_variants(family)
    except ModuleNotFoundError:
        return False
    return True


def tune_cases(families: Sequence[str] = FAMILIES, shapes: ShapeSet | None = None) -> list[TuneCase]:
    """The variants of every family that has a variants module, and the shapes file's workloads."""
    cases: list[TuneCase] = []
    for family in families:
        if not _has_variants(family):
            logger.info("family %s has no variants module: only its shapes-file workloads are tuned", family)
            continue
        for v in family_variants(family):
            cases.append(TuneCase(f"{family}/{v.label}", family, v.call, "variant", lambda v=v: v.call))
    if shapes is not None:
        for w in workloads(shapes, "tune", families=tuple(families), context="quick_context", max_experts=8):
            if w.tokens > _SMALL_BATCH_OPS.get(w.op, w.tokens):
                continue

            def call(w=w) -> object:
                return w.prepare(device(), fill=False).run()

            def prepare(w=w) -> Callable[[], object]:
                return w.prepare(device(), fill=True).run

            def dry(w=w) -> Callable[[], object]:
                return w.prepare(device(), fill=False).run

            cases.append(TuneCase(w.label, w.family, call, "shapes", prepare, dry))
    return cases


def _dry_run(
    sku: str,
    case: TuneCase,
    overrides: Mapping[str, Mapping[str, Any]],
    call: Callable[[], object] | None = None,
) -> tuple[list[LaunchSpec], list[configs.ConfigLookup]]:
    with (
        plan_for(sku),
        configs.override_configs(overrides, ignore_files=True),
        configs.record_lookups() as lookups,
        record_launches(execute=False) as specs,
    ):
        (call or case.call)()
    return list(specs), list(lookups)


def _selected(lookup: configs.ConfigLookup, specs: list[LaunchSpec], kernels: Sequence[str] | None) -> bool:
    if not kernels or lookup.kernel in kernels:
        return True
    # `--kernel` may name a launch spec: the lookup whose config that spec was built from.
    return any(
        s.name in kernels and (s.config is lookup.config or dict(s.config) == dict(lookup.config))
        for s in specs
    )


def plan_items(
    sku: str, cases: Sequence[TuneCase], kernels: Sequence[str] | None = None
) -> tuple[list[_Item], list[dict[str, str]]]:
    """One item per distinct (kernel, key) the cases look up; cases that fail are reported."""
    items: dict[str, _Item] = {}
    skipped = []
    for case in cases:
        try:
            specs, lookups = _dry_run(sku, case, {})
        except Exception as exc:  # a family mid-change or a shape it refuses: report, go on
            skipped.append({"case": case.label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for lk in lookups:
            if not _selected(lk, specs, kernels):
                continue
            ident = json.dumps([lk.kernel, lk.key], sort_keys=True, default=str)
            item = items.setdefault(ident, _Item(lk.kernel, dict(lk.key), [], []))
            if case not in item.cases:
                item.cases.append(case)
                item.defaults.append(dict(lk.default))
    return list(items.values()), skipped


# ---------------------------------------------------------------------------------------------------
# Candidates, the model, lowering


def _signature(specs: list[list[LaunchSpec]]) -> str:
    return json.dumps(
        [[{**s.key(), "grid": list(s.grid), "name": s.name} for s in case_specs] for case_specs in specs],
        sort_keys=True,
        default=str,
    )


def rank_candidates(sku: str, item: _Item) -> tuple[list[_Candidate], dict[str, int], float | None]:
    """Distinct candidates of an item, best modelled first; counts of what was dropped; the modelled
    seconds of the default config (the first candidate), when the host API accepts it."""
    sku_info = get_sku(sku)
    seen: set[str] = set()
    out: list[_Candidate] = []
    counts = {"candidates": 0, "rejected": 0, "duplicates": 0}
    default_s = None
    # Inputs once per case for all candidates (a config changes no input), freed with the item.
    with plan_for(sku):
        calls = [case.dry() if case.dry is not None else case.call for case in item.cases]
    for i, candidate in enumerate(spaces.candidates(item.kernel, item.defaults[0])):
        counts["candidates"] += 1
        try:
            per_case = [
                _dry_run(sku, case, {item.kernel: candidate}, call)[0]
                for case, call in zip(item.cases, calls, strict=True)
            ]
        except (ValueError, TypeError):
            counts["rejected"] += 1  # the host API refuses this config for the shape
            continue
        sig = _signature(per_case)
        if sig in seen:
            counts["duplicates"] += 1
            continue
        seen.add(sig)
        modelled = sum(perf_model.estimate_specs(specs, sku_info).seconds for specs in per_case if specs)
        if i == 0:
            default_s = modelled
        out.append(_Candidate(dict(candidate), [[_strip(s) for s in specs] for specs in per_case], modelled))
    # Within MODEL_TIE of the default's modelled time the model cannot tell: the default (the host
    # API's own UB-sized choice) stays first; other ties go to the smaller tiles (less UB, fewer pads).
    base = spaces.candidates(item.kernel, item.defaults[0])[0]
    band = default_s * MODEL_TIE if default_s is not None else 0.0

    def rank(c: _Candidate) -> tuple:
        tie = default_s is not None and c.modelled_s >= default_s - band
        return (default_s if tie else c.modelled_s, c.config != base, _tile_size(c.config))

    out.sort(key=rank)
    return out, counts, default_s


def _strip(spec: LaunchSpec) -> LaunchSpec:
    """The spec with its tensors replaced by empty ones of the same dtype: all that lowering and the
    report need (the signature depends on dtypes only), without keeping the inputs alive."""
    args = {
        k: torch.empty(0, dtype=v.dtype) if isinstance(v, torch.Tensor) else v for k, v in spec.args.items()
    }
    return dataclasses.replace(spec, args=args)


def _tile_size(config: Mapping[str, Any]) -> int:
    size = 1
    for value in config.values():
        if isinstance(value, int) and not isinstance(value, bool):
            size *= max(1, value)
    return size


def _verify(sku: str, pairs: list[tuple[_Item, _Candidate]], jobs: int, cache: ArtifactCache | None) -> None:
    """Lower every launch of each candidate (one batch) and set its verdict from the report."""
    planned = []
    for item, cand in pairs:
        for case, specs in zip(item.cases, cand.specs, strict=True):
            for spec in specs:
                vs = VariantSpec(Variant(case.family, case.label, case.call), spec)
                planned.append((cand, vs, LoweringRequest.from_spec(spec, sku, vs.label)))
    # One lowering per distinct request (candidates of several items often share launches).
    unique: dict[str, LoweringRequest] = {}
    for _, _, req in planned:
        unique.setdefault(req.cache_key(), req)
    lowered = dict(zip(unique, lower_many(list(unique.values()), jobs=jobs, cache=cache), strict=True))
    results = [lowered[req.cache_key()] for _, _, req in planned]
    verdicts: dict[int, list[str]] = {}
    ub: dict[int, int] = {}
    for (cand, vs, _), res in zip(planned, results, strict=True):
        row = report_row(vs, res)
        if not row["ok"]:
            verdicts.setdefault(id(cand), []).append(
                f"{vs.label}: {(row.get('error') or 'failed').splitlines()[-1]}"
            )
        else:
            ub[id(cand)] = max(ub.get(id(cand), 0), int(row.get("ub_bytes_buffered") or 0))
    for _, cand in pairs:
        problems = verdicts.get(id(cand))
        cand.verdict = "ok" if not problems else "; ".join(problems)[:300]
        cand.ub_bytes = ub.get(id(cand))


def _measure(item: _Item, cand: _Candidate, sku: str) -> float:
    """Seconds per call of every case with this candidate, timed on the device (do_bench, median)."""
    import triton.testing

    total = 0.0
    with plan_for(sku), configs.override_configs({item.kernel: cand.config}, ignore_files=True):
        for case in item.cases:
            run = case.prepare() if case.prepare is not None else case.call
            total += float(triton.testing.do_bench(run, warmup=5, rep=20, return_mode="median")) * 1e-3
    return total


def _uses_multibuffer(cands: list[_Candidate]) -> bool:
    return any("multibuffer" in s.options for c in cands for specs in c.specs for s in specs)


# ---------------------------------------------------------------------------------------------------
# Files


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file in the same folder and a rename: a reader
    (or a crash) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _merge_existing(path: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the file's entries for keys not tuned now; never replace a measured entry by a model one."""
    try:
        method, old = configs.parse_config_document(json.loads(path.read_text()), str(path))
    except (OSError, ValueError):
        return entries
    new_by_key = {json.dumps(e["key"], sort_keys=True, default=str): e for e in entries}
    merged = dict(new_by_key)
    for e in old:
        ident = json.dumps(e["key"], sort_keys=True, default=str)
        old_method = e.get("method", method)
        if ident not in new_by_key or (
            old_method == "measured" and new_by_key[ident]["method"] != "measured"
        ):
            merged[ident] = {**e, "method": old_method}
    return list(merged.values())


def write_config_files(out_dir: Path, sku: str, results: list[dict[str, Any]]) -> list[Path]:
    """One file per (kernel, shape key) of the SKU, from finished item results."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    shape_keys: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r.get("config") is None:
            continue
        shape_key, _ = spaces.split_key(r["key"])
        gk = (r["kernel"], json.dumps(shape_key, sort_keys=True, default=str))
        shape_keys[gk] = shape_key
        entry = {"key": r["key"], "config": r["config"], "method": r["method"]}
        for field in ("modelled_us", "measured_us", "default_modelled_us", "ub_bytes_buffered", "cases"):
            if r.get(field) is not None:
                entry[field] = r[field]
        groups.setdefault(gk, []).append(entry)
    written = []
    for (kernel, _), entries in sorted(groups.items()):
        shape_key = shape_keys[(kernel, _)]
        path = configs.config_file_path(out_dir, sku, kernel, shape_key)
        entries = _merge_existing(path, entries)
        entries.sort(key=lambda e: json.dumps(e["key"], sort_keys=True, default=str))
        methods = {e["method"] for e in entries}
        doc = {
            "format": configs.FORMAT_VERSION,
            "kernel": kernel,
            "sku": sku,
            "method": "measured" if methods == {"measured"} else "model",
            "triton_ascend": triton_ascend_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "generated_by": "vat tune",
            "shape_key": shape_key,
            "configs": entries,
        }
        atomic_write_json(path, doc)
        written.append(path)
    configs.clear_caches()
    return written


def _journal_path(out_dir: Path, sku: str) -> Path:
    return out_dir / sku / JOURNAL_NAME


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            done[record["item"]] = record["result"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the interruption
    return done


def _append_journal(path: Path, item_id: str, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"item": item_id, "result": result}, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class TuneProgress:
    sku: str
    phase: str  # "plan" | "rank" | "lower" | "measure" | "write"
    done: int
    total: int


def _result(item: _Item, winner: _Candidate | None, counts: dict[str, int], default_s: float | None,
            method: str, keep_multibuffer: bool, reason: str | None) -> dict[str, Any]:  # fmt: skip
    config = None
    if winner is not None:
        config = {k: v for k, v in winner.config.items() if k != spaces.MULTIBUFFER or keep_multibuffer}
    shape_key, _ = spaces.split_key(item.key)
    return {
        "kernel": item.kernel,
        "key": item.key,
        "shape_key": shape_key,
        "config": config,
        "method": method,
        "modelled_us": round(winner.modelled_s * 1e6, 3) if winner else None,
        "measured_us": round(winner.measured_s * 1e6, 3)
        if winner and winner.measured_s is not None
        else None,
        "default_modelled_us": round(default_s * 1e6, 3) if default_s is not None else None,
        "ub_bytes_buffered": winner.ub_bytes if winner else None,
        "cases": [c.label for c in item.cases],
        **counts,
        "reason": reason,
    }


def tune_sku(
    sku: str,
    cases: Sequence[TuneCase],
    out_dir: Path,
    *,
    kernels: Sequence[str] | None = None,
    method: str = "auto",
    resume: bool = False,
    jobs: int = 1,
    cache: ArtifactCache | None = None,
    on_progress: Callable[[TuneProgress], None] | None = None,
) -> dict[str, Any]:
    """Tune every item of `cases` for one SKU and write its config files into `out_dir`."""
    sku = get_sku(sku).name
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    can_measure = measurement_available(sku)
    if method == "measured" and not can_measure:
        raise MeasurementUnavailableError(
            f"method 'measured' needs this process to run compiled kernels on an NPU of {sku} "
            "(no such device here); use --method model (the roofline cost model)"
        )
    measure = can_measure and method != "model"
    out_dir = Path(out_dir)
    journal = _journal_path(out_dir, sku)
    if not resume:
        journal.unlink(missing_ok=True)
    done = _read_journal(journal)

    def progress(phase: str, n: int, total: int) -> None:
        if on_progress:
            on_progress(TuneProgress(sku, phase, n, total))

    items, skipped = plan_items(sku, cases, kernels)
    pending = [it for it in items if it.item_id not in done]
    results: list[dict[str, Any]] = [done[it.item_id] for it in items if it.item_id in done]
    progress("plan", len(results), len(items))

    ranked: list[tuple[_Item, list[_Candidate], dict[str, int], float | None, bool]] = []
    for item in pending:
        cands, counts, default_cost = rank_candidates(sku, item)
        ranked.append((item, cands, counts, default_cost, _uses_multibuffer(cands)))

    # Lower the best remaining candidate of every unresolved item, one batch per round.
    state = {id(item): 0 for item, *_ in ranked}
    unresolved = list(ranked)
    while unresolved:
        batch = []
        for entry in unresolved:
            item, cands = entry[0], entry[1]
            wanted = MEASURE_TOP if measure else 1
            fresh = [c for c in cands[state[id(item)] :][:wanted]]
            state[id(item)] += len(fresh)
            batch.extend((item, c) for c in fresh)
        if batch:
            progress("lower", len(results), len(items))
            _verify(sku, batch, jobs, cache)
        still = []
        for entry in unresolved:
            item, cands, counts, default_cost, keep_mb = entry
            fitting = [c for c in cands[: state[id(item)]] if c.verdict == "ok"]
            exhausted = state[id(item)] >= len(cands)
            if not fitting and not exhausted:
                still.append(entry)
                continue
            item_method, winner, reason = "model", None, None
            if fitting and measure and all(c.prepare is not None for c in item.cases):
                progress("measure", len(results), len(items))
                for c in fitting:
                    c.measured_s = _measure(item, c, sku)
                winner, item_method = min(fitting, key=lambda c: c.measured_s or 0.0), "measured"
            elif fitting:
                winner = fitting[0]  # the best-ranked that lowers and fits
            else:
                pruned = [c.verdict for c in cands if c.verdict and c.verdict != "ok"]
                reason = "no candidate lowers and fits the UB" + (f" ({pruned[0]})" if pruned else "")
            counts = {**counts, "lowered": sum(1 for c in cands if c.verdict is not None),
                      "pruned": sum(1 for c in cands if c.verdict not in (None, "ok"))}  # fmt: skip
            result = _result(item, winner, counts, default_cost, item_method, keep_mb, reason)
            _append_journal(journal, item.item_id, result)
            results.append(result)
            progress("lower", len(results), len(items))
        unresolved = still

    progress("write", len(results), len(items))
    written = write_config_files(out_dir, sku, results)
    journal.unlink(missing_ok=True)
    return {
        "sku": sku,
        "method": "measured" if measure else "model",
        "items": len(items),
        "resumed": len(items) - len(pending),
        "results": results,
        "skipped_cases": skipped,
        "files": [str(p) for p in written],
    }


def tune(
    skus: Sequence[str],
    out_dir: Path,
    *,
    kernels: Sequence[str] | None = None,
    families: Sequence[str] = FAMILIES,
    shapes: ShapeSet | None = None,
    method: str = "auto",
    resume: bool = False,
    jobs: int = 1,
    cache: ArtifactCache | None = None,
    on_progress: Callable[[TuneProgress], None] | None = None,
) -> list[dict[str, Any]]:
    """Tune every SKU in turn (see the module docstring); one summary per SKU."""
    if method == "measured":
        missing = [s for s in skus if not measurement_available(s)]
        if missing:  # refuse before any work, not after the first SKU
            raise MeasurementUnavailableError(
                f"method 'measured' needs an NPU of each SKU in this process; none for {', '.join(missing)}"
            )
    cases = tune_cases(families, shapes)
    return [
        tune_sku(
            sku,
            cases,
            out_dir,
            kernels=kernels,
            method=method,
            resume=resume,
            jobs=jobs,
            cache=cache,
            on_progress=on_progress,
        )  # fmt: skip
        for sku in skus
    ]
