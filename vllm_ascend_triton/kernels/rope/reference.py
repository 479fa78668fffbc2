"""Plain-torch rope and MRoPE (vLLM's `RotaryEmbedding.forward_static` and
`MRotaryEmbedding.forward_native` semantics), out of place. The tests also compare against
vLLM's own references."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _rotate_ref(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_size: int, is_neox: bool
) -> torch.Tensor:
    """x [T, ...]; cos/sin [T, rot_dim/2] already in x's dtype."""
    shape = x.shape
    x = x.reshape(shape[0], -1, head_size)
    rot = 2 * cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    c, s = cos[:, None, :], sin[:, None, :]
    if is_neox:
        x1, x2 = xr.chunk(2, dim=-1)
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    else:
        x1, x2 = xr[..., ::2], xr[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((out, xp), dim=-1).reshape(shape)


def rope_reference(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain-torch rope (vLLM's forward_static semantics), out of place."""
    idx = positions.reshape(-1).long()
    if offsets is not None:
        idx = idx + offsets.reshape(-1).long()
    cos, sin = cos_sin_cache[idx].to(query.dtype).chunk(2, dim=-1)
    q = _rotate_ref(query.reshape(idx.numel(), -1), cos, sin, head_size, is_neox).reshape(query.shape)
    k = (
        None
        if key is None
        else _rotate_ref(key.reshape(idx.numel(), -1), cos, sin, head_size, is_neox).reshape(key.shape)
    )
    return q, k


def _mrope_channel_rows(half_rot: int, sections: Sequence[int], interleaved: bool) -> torch.Tensor:
    """For each half-dim channel, which position row (0=T, 1=H, 2=W) it uses."""
    c = torch.arange(half_rot)
    if interleaved:
        rows = torch.zeros(half_rot, dtype=torch.long)
        rows[(c % 3 == 1) & (c < 3 * sections[1])] = 1
        rows[(c % 3 == 2) & (c < 3 * sections[2])] = 2
        return rows
    return torch.repeat_interleave(torch.arange(3), torch.tensor(list(sections)))


def mrope_reference(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    mrope_section: Sequence[int],
    mrope_interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain-torch MRoPE (vLLM MRotaryEmbedding.forward_native semantics), out of place."""
    if positions.dim() == 1:
        return rope_reference(positions, query, key, head_size, cos_sin_cache, is_neox)
    half = cos_sin_cache.shape[1] // 2
    rows = _mrope_channel_rows(half, mrope_section, mrope_interleaved)
    cs = cos_sin_cache[positions.long()]  # [3, T, rot]
    chan = torch.arange(half)
    cos = cs[rows, :, chan].T.to(query.dtype)  # [T, half]
    sin = cs[rows, :, half + chan].T.to(query.dtype)
    n = positions.shape[1]
    q = _rotate_ref(query.reshape(n, -1), cos, sin, head_size, is_neox).reshape(query.shape)
    k = (
        None
        if key is None
        else _rotate_ref(key.reshape(n, -1), cos, sin, head_size, is_neox).reshape(key.shape)
    )
    return q, k
