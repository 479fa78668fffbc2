"""`vat tune`: search spaces (`spaces`) and the tuner (`tuner`). It ranks candidates with the roofline
model in `runtime.perf_model` (or measures them on an NPU) and writes the per-SKU config files the
runtime reads (`runtime/tuned_configs/<SKU>/<kernel>/<shape key>.json`; format and lookup in
`runtime.configs`). See docs/tuning.md."""
