"""The limits of every kernel, in one place. Host wrappers check them with these constants (and
only these), so the same limit holds everywhere it is checked; a call past a limit is a clear
`ValueError`, never a wrong answer. Each limit says why it exists.
"""

from __future__ import annotations

# --- rope ------------------------------------------------------------------------------------------
# A whole half row of rotary pairs is one tile axis (the dim axis is not tiled): 512 dims = 256 pairs.
ROPE_MAX_HEAD_SIZE = 512

# --- MoE routing, align, permute, experts -----------------------------------------------------------
# (owned by the MoE families; filled in by their package move)

# --- attention --------------------------------------------------------------------------------------
# (owned by the attention family; filled in by its package move)
