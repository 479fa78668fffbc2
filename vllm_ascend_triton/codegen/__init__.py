"""Ahead-of-time lowering of kernels for an Ascend SKU (`lower`) and the static report read from
the lowered IR (`report`)."""
