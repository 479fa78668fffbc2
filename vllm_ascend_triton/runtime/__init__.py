"""Runtime: the SKU table (`sku`), the execution backend (`backend`), device detection
(`device`), launching and grid sizing (`launch`).

Kept import-light on purpose: the package's `__init__` imports `runtime.backend` to choose the
backend before any kernel exists, so nothing here may import torch or triton eagerly.
"""
