"""`vat bench` as a library: per kernel over real-model shapes, error against the torch reference,
lowering status and UB use for a SKU, modelled time and share of roofline, and on a compiled
backend (NPU, or an NVIDIA GPU through `VAT_BACKEND=cuda`) measured time, bandwidth, throughput and
the host-side launch overhead. Imports only torch, numpy and our package (rich and matplotlib only
in the output helpers, optional), so the GPU script runs with upstream Triton and no venv."""
