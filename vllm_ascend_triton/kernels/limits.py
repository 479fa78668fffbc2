"""The limits of every kernel, in one place. Host wrappers check them with these constants (and
only these), so the same limit holds everywhere it is checked; a call past a limit is a clear
`ValueError`, never a wrong answer. Each limit says why it exists.
"""

from __future__ import annotations

# --- rope ------------------------------------------------------------------------------------------
# A whole half row of rotary pairs is one tile axis (the dim axis is not tiled): 512 rotary dims
# = 256 pairs per tile row, at BLOCK_H = 1 still within every SKU's UB budget. Head sizes beyond it
# are fine when only the first `rot_dim <= 512` dims rotate.
ROPE_MAX_ROTARY_DIM = 512

# --- MoE routing, align, permute, experts -----------------------------------------------------------
# The top-k and the sort keep every expert of a row in one tile axis (no cross-tile merge).
MOE_MAX_EXPERTS = 1024
# Top-k selection is unrolled k times at compile time and its results live in a [rows, k] tile;
# real models route to 2..16 experts.
MOE_MAX_TOPK = 32
# Counts, ranks and padded slots are reduced in fp32 lanes (the vector unit's native width),
# exact below 2^24.
MOE_MAX_SLOTS = 2**24

# W8A8 experts: one int32 accumulator sums K products of int8 values (|a * b| <= 128 * 127), so
# K <= 2^17 cannot overflow (128 * 127 * 2^17 < 2^31); real hidden/intermediate sizes are <= 8K.
W8A8_MAX_K = 2**17

# --- attention --------------------------------------------------------------------------------------
# One head-size limit for the whole family (reshape_and_cache and unified_attention): a head is one
# tile axis (padded to a power of two) and the attention tiles Q, K, V, S/P and the fp32 accumulator
# of HEAD_PAD 256 at the 16-row / 16-key minimum are what the UB budget still holds in fp32; a
# cache written with larger heads could not be read by unified_attention anyway.
ATTENTION_MAX_HEAD_SIZE = 256
# KV tiles never straddle cache blocks and the cube wants >= 16 keys per tile.
ATTENTION_MIN_BLOCK_SIZE_MULTIPLE = 16
# Query/key positions are compared as fp32 in the kernel (Ascend vectorizes float compares):
# exact below 2^24.
ATTENTION_MAX_POSITION = 2**24
# Split-KV segments are one tile axis of the reduction kernel (SEG_PAD = next power of two).
ATTENTION_MAX_KV_SPLITS = 64
# One query tile holds every query head of a KV head (BLOCK_M >= QPK_PAD rows x HEAD_PAD): its Q
# block in the data dtype may take at most this share of the SKU's UB. From the adapter IR
# (modelled): MQA with 64 heads x 256 fp32 (64 KB Q block) uses 96 KB single-buffered and fits
# 192 KB double-buffered; 128 heads x 256 fp32 (128 KB) needs 160 KB and does not.
ATTENTION_MAX_Q_TILE_UB_FRACTION = 1 / 3

# --- MLA (multi-head latent attention) ------------------------------------------------------------
# The latent (kv_lora_rank) is one axis of the cache row and of the decode output; its score part
# is chunked (KC) but the value chunk (DV) and the reduction's row are LORA_PAD wide: DeepSeek-V3,
# Kimi-K2 and GLM-5-class models use 512.
MLA_MAX_KV_LORA_RANK = 512
# The rope part of the latent cache row is one tile axis (DeepSeek-V3: 64).
MLA_MAX_ROPE_DIM = 128
# Prefill heads: the qk head (nope + rope, 192 on DeepSeek-V3) is split into a power-of-two part
# and the rest, each one tile axis; the v head is one tile axis.
MLA_MAX_PREFILL_HEAD_SIZE = 256
# Decode KV tiles never straddle cache blocks and the cube wants >= 16 keys per tile.
MLA_MIN_BLOCK_SIZE_MULTIPLE = 16
# Positions are compared as fp32 in the kernels (Ascend vectorizes float compares): exact below 2^24.
MLA_MAX_POSITION = 2**24
# Split-KV segments are one tile axis of the reduction kernel (SEG_PAD = next power of two).
MLA_MAX_KV_SPLITS = 64
# Query tokens per sequence in one decode call (speculative decoding: 1 + draft tokens); they share
# a tile with the head group, so the tile's rows are query_len x heads.
MLA_MAX_QUERY_LEN = 16
