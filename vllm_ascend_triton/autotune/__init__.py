"""Per-SKU tuned launch configs. `configs/<SKU>/<kernel>.json` files (format in
`runtime/configs.py`, which reads them) are shipped in the package; none is shipped yet, so every
kernel runs its host wrapper's default config, sized for the SKU's Unified Buffer."""
