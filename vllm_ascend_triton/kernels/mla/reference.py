"""Plain-torch references of the MLA family (float64, obviously correct), and a latent-cache
case builder shared by the tests and `vat check`."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def concat_and_cache_mla_reference(
    kv_c: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """In place on `kv_cache` `[num_blocks, block_size, L + R]`: token t writes `[kv_c[t] | k_pe[t]]`
    at slot `slot_mapping[t]`; a slot outside [0, num_blocks * block_size) (-1 included) skips."""
    num_blocks, block_size, _ = kv_cache.shape
    lora = kv_c.shape[-1]
    pe = k_pe.reshape(k_pe.shape[0], -1)
    for t, slot in enumerate(slot_mapping.tolist()):
        if not 0 <= slot < num_blocks * block_size:
            continue
        kv_cache[slot // block_size, slot % block_size, :lora] = kv_c[t].to(kv_cache.dtype)
        kv_cache[slot // block_size, slot % block_size, lora:] = pe[t].to(kv_cache.dtype)


def mla_decode_reference(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    softmax_scale: float,
    kv_lora_rank: int,
    query_len: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MQA over the latent cache, float64. q `[B * query_len, H, L + R]`; sequence s owns rows
    `s * query_len + i`, and row i sees the first `seq_lens[s] - query_len + 1 + i` keys.
    Returns (out `[rows, H, L]`, lse `[rows, H]`, natural log). Keys past the block table's width
    or in a block id outside the cache are masked out; a row that sees no key gets 0 / -inf."""
    rows, num_heads, _ = q.shape
    num_blocks, block_size, _ = kv_cache.shape
    width = block_table.shape[1]
    out = torch.zeros(rows, num_heads, kv_lora_rank, dtype=torch.float64)
    lse = torch.full((rows, num_heads), float("-inf"), dtype=torch.float64)
    for s, seq_len in enumerate(seq_lens.tolist()):
        n_blocks = min(max(-(-seq_len // block_size), 0), width)
        n_keys = min(max(seq_len, 0), n_blocks * block_size)
        blocks = block_table[s, :n_blocks].long()
        ok = (blocks >= 0) & (blocks < num_blocks)
        keys = kv_cache[torch.where(ok, blocks, 0)].reshape(-1, kv_cache.shape[-1])[:n_keys].double()
        key_ok = ok.repeat_interleave(block_size)[:n_keys]
        for i in range(query_len):
            r = s * query_len + i
            visible = key_ok & (torch.arange(n_keys) < seq_len - query_len + 1 + i)
            if not visible.any():
                continue
            kv = keys[visible]
            scores = q[r].double() @ kv.T * softmax_scale  # [H, n]
            lse[r] = torch.logsumexp(scores, dim=-1)
            out[r] = torch.softmax(scores, dim=-1) @ kv[:, :kv_lora_rank]
    return out, lse


def mla_prefill_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged dense attention, float64: sequence s has queries `q[cu_q[s]:cu_q[s+1]]` and keys /
    values `k/v[cu_k[s]:cu_k[s+1]]` (`[tokens, H, D]`, qk and v head sizes may differ). Causal is
    bottom-right aligned (query i sees keys `<= k_len - q_len + i`). Returns (out `[T, H, Dv]`,
    lse `[H, T]`, natural log); a row that sees no key gets 0 / -inf."""
    num_tokens, num_heads, _ = q.shape
    out = torch.zeros(num_tokens, num_heads, v.shape[-1], dtype=torch.float64)
    lse = torch.full((num_heads, num_tokens), float("-inf"), dtype=torch.float64)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        q_len, k_len = cq[s + 1] - cq[s], ck[s + 1] - ck[s]
        if q_len <= 0 or k_len <= 0:
            continue
        qs = q[cq[s] : cq[s + 1]].double().transpose(0, 1)  # [H, q, D]
        ks = k[ck[s] : ck[s + 1]].double().transpose(0, 1)
        vs = v[ck[s] : ck[s + 1]].double().transpose(0, 1)
        scores = qs @ ks.transpose(1, 2) * softmax_scale
        allowed = torch.ones(q_len, k_len, dtype=torch.bool)
        if causal:
            allowed = torch.arange(k_len)[None, :] <= (k_len - q_len + torch.arange(q_len))[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
        seen = allowed.any(-1)  # [q]
        safe = scores.masked_fill(~seen[None, :, None], 0.0)
        o = (torch.softmax(safe, dim=-1) @ vs).transpose(0, 1)
        o[~seen] = 0.0
        out[cq[s] : cq[s + 1]] = o
        lse[:, cq[s] : cq[s + 1]] = torch.logsumexp(scores, dim=-1)
    return out, lse


def make_latent_case(
    seq_lens: Sequence[int],
    num_heads: int,
    kv_lora_rank: int,
    rope_dim: int,
    block_size: int,
    dtype: torch.dtype,
    query_len: int = 1,
    extra_blocks: int = 0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A decode batch over a shuffled paged latent cache: q `[B * query_len, H, L + R]`,
    kv_cache `[blocks, block_size, L + R]`, block_table (int32, unused tail entries -1),
    seq_lens (int32)."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in seq_lens]
    total = sum(need) + extra_blocks
    width = max([1, *need])
    perm = torch.randperm(max(total, 1), generator=g)
    table = torch.full((len(seq_lens), width), -1, dtype=torch.int32)
    pos = 0
    for s, n in enumerate(need):
        table[s, :n] = perm[pos : pos + n].to(torch.int32)
        pos += n
    dim = kv_lora_rank + rope_dim
    cache = torch.randn(max(total, 1), block_size, dim, generator=g).to(dtype)
    q = torch.randn(len(seq_lens) * query_len, num_heads, dim, generator=g).to(dtype)
    return {
        "q": q,
        "kv_cache": cache,
        "block_table": table,
        "seq_lens": torch.tensor(list(seq_lens), dtype=torch.int32),
    }
