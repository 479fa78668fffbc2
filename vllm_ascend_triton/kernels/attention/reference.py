"""Plain-torch references of the attention family (float64, obviously correct), and the paged
test-case builder shared by the tests and `vat check`."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def reshape_and_cache_reference(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """In place on the caches. A slot outside [0, num_blocks * block_size) (-1 included) skips
    its token, the kernel's contract with input checks off."""
    num_blocks, block_size = key_cache.shape[:2]
    for t, slot in enumerate(slot_mapping.tolist()):
        if not 0 <= slot < num_blocks * block_size:
            continue
        key_cache[slot // block_size, slot % block_size] = key[t].to(key_cache.dtype)
        value_cache[slot // block_size, slot % block_size] = value[t].to(value_cache.dtype)


def unified_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqused_k: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    window_size: tuple[int, int],
    block_table: torch.Tensor,
    softcap: float,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sequence: gather its keys/values block by block, then dense masked softmax attention
    in float64. Returns a float64 `[T, Hq, D]` tensor; rows of no sequence stay NaN.

    The kernel's contract for metadata that input checks would reject: keys whose block-table
    column lies past the table's width (seqused_k too large) or whose block id lies outside
    [0, num_blocks) are masked out of the softmax; a row that sees no key and no sink is 0. A
    row's output is the sum over the keys it sees only (a non-finite value of a key it does not
    see does not reach it)."""
    num_tokens, num_q_heads, head_size = q.shape
    num_blocks, block_size, num_kv_heads = k_cache.shape[:3]
    qpk = num_q_heads // num_kv_heads
    width = block_table.shape[1]
    out = torch.full((num_tokens, num_q_heads, head_size), float("nan"), dtype=torch.float64)
    cu = cu_seqlens_q.tolist()
    for s, seq_len in enumerate(seqused_k.tolist()):
        q_len = cu[s + 1] - cu[s]
        if q_len <= 0:
            continue
        n_blocks = min(max(-(-seq_len // block_size), 0), width)
        n_keys = min(max(seq_len, 0), n_blocks * block_size)
        blocks = block_table[s, :n_blocks].long()
        block_ok = (blocks >= 0) & (blocks < num_blocks)
        blocks = torch.where(block_ok, blocks, 0)
        key_ok = block_ok.repeat_interleave(block_size)[:n_keys]
        keys = k_cache[blocks].reshape(-1, num_kv_heads, head_size)[:n_keys].double()
        values = v_cache[blocks].reshape(-1, num_kv_heads, head_size)[:n_keys].double()
        ctx = seq_len - q_len
        q_pos = torch.arange(q_len)[:, None] + ctx
        k_pos = torch.arange(n_keys)[None, :]
        visible = key_ok[None, :].expand(q_len, n_keys).clone()
        if causal:
            visible &= k_pos <= q_pos
        if window_size[0] >= 0:
            width_w = window_size[0] + 1
            visible &= (q_pos - k_pos) < width_w
            if not causal:
                visible &= (k_pos - q_pos) < width_w
        sees_none = ~visible.any(dim=1)
        for h in range(num_q_heads):
            qh = q[cu[s] : cu[s + 1], h].double()
            vh = values[:, h // qpk]
            scores = softmax_scale * qh @ keys[:, h // qpk].T
            if softcap > 0:
                scores = softcap * torch.tanh(scores / softcap)
            scores = scores.masked_fill(~visible, float("-inf"))
            if alibi_slopes is not None:
                scores = scores + float(alibi_slopes[h]) * (k_pos - ctx).double()
            if sinks is not None:
                sink_col = torch.full((q_len, 1), float(sinks[h]), dtype=torch.float64)
                probs = torch.softmax(torch.cat([scores, sink_col], dim=1), dim=1)[:, :-1]
            else:
                probs = torch.softmax(scores, dim=1)
            probs = probs.masked_fill(sees_none[:, None], 0.0)
            if bool(torch.isfinite(vh).all()):
                rows = probs @ vh
            else:  # only the keys a row sees: 0 * inf must not reach it
                rows = torch.where(visible[:, :, None], probs[:, :, None] * vh[None], 0.0).sum(dim=1)
            out[cu[s] : cu[s + 1], h] = rows
    return out


def make_paged_case(
    q_lens: Sequence[int],
    kv_lens: Sequence[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    *,
    extra_blocks: int = 0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random paged batch: shuffled physical blocks plus 3 spare ones; `extra_blocks` unused
    trailing block-table entries per sequence point at spare blocks. Every cache row no
    sequence owns (spare blocks, the tail of each last block) holds NaN, so a kernel that reads
    past a sequence's keys, or a trailing table entry, turns its output NaN. Shared by tests and
    self_check."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in kv_lens]
    width = max(need + [1]) + extra_blocks
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    spare = perm[sum(need) :]
    table = spare[torch.randint(0, len(spare), (len(kv_lens), width), generator=g)]
    owned = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    used = 0
    for s, (n, kv_len) in enumerate(zip(need, kv_lens, strict=True)):
        table[s, :n] = perm[used : used + n]
        for i in range(n):
            owned[int(perm[used + i]), : min(block_size, kv_len - i * block_size)] = True
        used += n
    cu = torch.tensor(
        [0, *torch.tensor(list(q_lens), dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32
    )
    total = int(cu[-1])
    q = torch.randn(total, num_q_heads, head_size, generator=g).to(dtype)
    caches = []
    for _ in range(2):
        cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, generator=g).to(dtype)
        cache[~owned] = float("nan")
        caches.append(cache)
    return {
        "q": q,
        "k_cache": caches[0],
        "v_cache": caches[1],
        "cu_seqlens_q": cu,
        "seqused_k": torch.tensor(list(kv_lens), dtype=torch.int32),
        "block_table": table,
    }
