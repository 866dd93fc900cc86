"""Token rules for image tokens laid out on their latent grid (`TokenGrid`, algebra in
passes/token_grid.py), and for the ops that mix tokens (`mix`: plan.MixingSite):

    x.unflatten(1, (H, W))  [B, N, C] -> [B, H, W, C]     on the grid (GridShape: n, 1)
    permute(0, 3, 1, 2)     [B, C, H, W]                  factors reordered
    conv2d(x, w 3x3, padding=1)                           mixes neighbours: runs on every token
    conv2d(x, w 1x1)                                      token-wise (PointwiseConv)
    flatten(2, 3)           [B, C, N]                     back on one token axis

Layout changes regroup or reorder the grid's factors; element-wise ops, channel chunks and
1x1 convolutions are token-wise; a convolution with a kernel over the grid, attention within
groups folded into the batch, a sum over the tokens are token-mixing ops, which run on
operands completed from caches of every image token."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from .. import token_grid
from ..nodes import arg, attention_args, normal_dim, value
from ..plan import (ConstantPad, FrameGroups, FrameRows, GridFactor, GridShape, GridTable, MixedOperand,
                    MixingSite, PointwiseConv, TokenAxis, TokenGrid)
from .permutation import permutation

if TYPE_CHECKING:
    from ..token_propagation import Propagation


def operand_grid(p: Propagation, node: fx.Node, a) -> TokenGrid:
    """The TokenGrid of operand `a` of `node`: frames (FrameGroups, FrameRows) and a token
    axis are grids too (frames x tokens of a frame; one axis of N tokens)."""
    t = p.ax(a)
    shape = tuple(p.tensor(node, a).shape)
    if isinstance(t, TokenGrid):
        return t
    if isinstance(t, TokenAxis):
        if not t.layout.is_image_only:
            p.fail(node, f"image tokens joint with text ({t.layout}) meet the token grid")
        return token_grid.of_token_axis(t, shape)
    if isinstance(t, (FrameGroups, FrameRows)):
        size = t.layout.full_length // t.frames
        if t.frames == 1 or size == 1:
            p.fail(node, f"image tokens in {t.frames} frames of {size} tokens are no grid")
        if isinstance(t, FrameGroups):
            return token_grid.grid_of((t.frames, size), shape, {t.dim: 0, t.dim + 1: 1}, t.layout)
        rows = token_grid.grid_of((t.frames, size), shape, {t.dim: 1}, t.layout)
        batch = (GridFactor(None, t.batch),) if t.batch > 1 else ()
        return TokenGrid(rows.sizes, (batch + (GridFactor(0, t.frames),),) + rows.dims[1:], t.layout)
    p.stray_tokens(node, "one tensor on the token grid")


def grid_pointwise(p: Propagation, node: fx.Node, name: str):
    out = p.tensor(node, node)
    operands = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
    grids = {operand_grid(p, node, a) for a in operands if p.ax(a) is not None}
    if len(grids) != 1 or any(p.ndim(node, a) != out.dim() for a in operands if p.ax(a) is not None):
        p.fail(node, "operands hold image tokens laid out differently on the token grid")
    g = grids.pop()
    resized = token_grid.resized(g, tuple(out.shape))
    if resized is None:
        p.fail(node, "broadcasting changes the token grid")
    for a in operands:
        if p.ax(a) is None and isinstance(value(a), torch.Tensor):
            grid_table(p, node, a, resized, tuple(out.shape))
    return resized


def grid_table(p: Propagation, node: fx.Node, a: fx.Node, g: TokenGrid, out_shape) -> None:
    """An operand without image tokens of an element-wise op on the grid `g`: where it
    varies along axes holding grid factors, it must span each such axis whole (a row per
    frame of [B*F, 1, C] on [B*F, S, C]); it is then a GridTable, gathered with the tokens."""
    v = value(a)
    lead = len(out_shape) - v.dim()
    varies = [d for d in token_grid.grid_dims(g) if d >= lead and v.shape[d - lead] != 1]
    if not varies:
        return
    for d in varies:
        if v.shape[d - lead] != out_shape[d]:
            p.fail(node, f"operand {a.name} varies along axis {d}, which holds the token grid, "
                   f"with {v.shape[d - lead]} of its {out_shape[d]} positions")
    sizes = [out_shape[d] if d in token_grid.grid_dims(g) else (v.shape[d - lead] if d >= lead else 1)
             for d in range(len(out_shape))]
    table = token_grid.resized(g, tuple(sizes))
    if table is None:
        p.fail(node, f"operand {a.name} cannot be laid out on the token grid")
    p.plan.grid_tables.append(GridTable(node, a, table))


def grid_channels(p: Propagation, node: fx.Node, name: str):
    """linear, layer_norm, rms_norm over trailing axes that hold no grid factor: token-wise."""
    x = node.args[0]
    if any(p.ax(a) is not None for a in node.all_input_nodes if a is not x):
        p.fail(node, "weights depend on image tokens")
    g = operand_grid(p, node, x)
    shape = arg(node, 1, "normalized_shape") if name != "linear" else None
    k = 1 if name == "linear" else (len(shape) if isinstance(shape, (tuple, list)) else 1)
    ndim = p.ndim(node, x)
    if any(d >= ndim - k for d in token_grid.grid_dims(g)):
        p.fail(node, f"{name} over an axis that holds the token grid")
    out = token_grid.resized(g, tuple(p.tensor(node, node).shape))
    if out is None:
        p.fail(node, f"{name} changes the token grid")
    return out


def grid_attention(p: Propagation, node: fx.Node, name: str):
    """sdpa on image tokens laid out on their grid with groups folded into the batch axis
    (Latte: attention within each frame, q, k, v [B*F, H, S, D]; across the frames at each
    position, [B*S, H, F, D]; per-frame cross-attention to text, k, v [B*F, H, L, D]).
    A gathered token reads the keys of its whole group: the attention runs on its
    operands completed to every token (a MixingSite; the query's rows of tokens not
    computed are discarded) and the active rows of its result are gathered back."""
    args = attention_args(node)
    q, k, v, mask = args["query"], args["key"], args["value"], args.get("attn_mask")
    if args.get("is_causal") or isinstance(mask, fx.Node):
        p.fail(node, "attention on the token grid with a mask or causal")
    operands = [(a, operand_grid(p, node, a)) for a in dict.fromkeys((q, k, v)) if p.ax(a) is not None]
    for a, g in operands:
        if p.ndim(node, a) - 1 in token_grid.grid_dims(g):
            p.fail(node, f"{a.name} holds the token grid on its feature axis")
    if p.ax(q) is None:
        return mix(p, node, operands)
    out = token_grid.resized(operand_grid(p, node, q), tuple(p.tensor(node, node).shape))
    if out is None:
        p.fail(node, "attention changes the token grid of its queries")
    return mix(p, node, operands, out)


def grid_index(p: Propagation, node: fx.Node, name: str):
    p.fail(node, "indexing of image tokens laid out on their grid")


def grid_data_first(p: Propagation, node: fx.Node, name: str):
    """`out.type_as(query)`: the other argument gives the dtype only."""
    x = node.args[0]
    return None if p.ax(x) is None else operand_grid(p, node, x)


def grid_permute(p: Propagation, node: fx.Node, name: str):
    return token_grid.permuted(operand_grid(p, node, node.args[0]), permutation(p, node, name))


def grid_reshape(p: Propagation, node: fx.Node, name: str):
    g = operand_grid(p, node, node.args[0])
    out_shape = tuple(p.tensor(node, node).shape)
    new = token_grid.regroup(g, out_shape)
    if new is None:
        in_shape = tuple(p.tensor(node, node.args[0]).shape)
        p.fail(node, f"{name} {in_shape} -> {out_shape} cuts an axis of the token grid {g.sizes}")
    if name in ("view", "reshape"):
        grid_literal(p, node, 0, new.dims)
    elif name == "unflatten":
        d = normal_dim(arg(node, 1, "dim"), len(out_shape) - len(arg(node, 2, "sizes")) + 1)
        grid_literal(p, node, d, new.dims[d:d + len(arg(node, 2, "sizes"))])
    return token_grid.as_token_axis(new)


def grid_literal(p: Propagation, node: fx.Node, first: int, dims) -> None:
    """Record the sizes of the axes holding grid factors (see plan.GridShape)."""
    sizes = tuple((math.prod(f.size for f in fs if f.axis is None), any(f.axis == 0 for f in fs))
                  if token_grid.holds_grid(fs) else None for fs in dims)
    p.plan.literals.append(GridShape(node, first, sizes))


def grid_chunk(p: Propagation, node: fx.Node, name: str):
    """chunk / split along an axis that holds no grid factor (GLU gates on channels)."""
    g = operand_grid(p, node, node.args[0])
    ndim = p.ndim(node, node.args[0])
    d = arg(node, 2, "dim", 0)
    if not isinstance(d, int) or normal_dim(d, ndim) in token_grid.grid_dims(g):
        p.fail(node, f"{name} along dim={d!r}, which holds the token grid")
    outs = value(node)
    if not isinstance(outs, (tuple, list)):
        p.fail(node, "its result has no recorded tuple of tensors")
    return tuple(token_grid.resized(g, tuple(o.shape)) for o in outs)


def split_into_grid(p: Propagation, node: fx.Node, t: TokenAxis, k: int):
    """x.unflatten(1, (F, H, W))  [B, N, C] -> [B, F, H, W, C]: the image tokens on their
    latent grid (SanaVideo's Mix-FFN); rewritten (n, 1, 1)."""
    out_shape = tuple(p.tensor(node, node).shape)
    sizes = out_shape[t.dim:t.dim + k]
    g = token_grid.grid_of(sizes, out_shape, {t.dim + i: i for i in range(k)}, t.layout)
    grid_literal(p, node, t.dim, g.dims[t.dim:t.dim + k])
    return token_grid.as_token_axis(g)


def pad(p: Propagation, node: fx.Node, name: str):
    """F.pad(x, (l_last, r_last, l_prev, r_prev, ..)): token-wise when it pads no axis that
    holds image tokens (Sana's value padded by a ones channel); padding the token axis
    adds positions that are no token."""
    x = node.args[0]
    pads, mode = arg(node, 1, "pad"), arg(node, 2, "mode", "constant")
    if not isinstance(pads, (tuple, list)) or not all(isinstance(w, int) and w >= 0 for w in pads):
        p.fail(node, f"pad with {pads!r} (ints >= 0 are needed)")
    if mode != "constant":
        p.fail(node, f"pad in mode {mode!r} of a tensor holding image tokens (constant pads only)")
    p.plan.literals.append(ConstantPad(node))
    ndim = p.ndim(node, x)
    padded = {ndim - 1 - k for k in range(len(pads) // 2) if (pads[2 * k], pads[2 * k + 1]) != (0, 0)}
    t = p.ax(x)
    if isinstance(t, TokenAxis):
        if t.dim in padded:
            p.fail(node, "pad of the token axis")
        return t
    g = operand_grid(p, node, x)
    if padded & set(token_grid.grid_dims(g)):
        p.fail(node, "pad of an axis that holds the token grid")
    return token_grid.resized(g, tuple(p.tensor(node, node).shape))


def convolution(p: Propagation, node: fx.Node, name: str):
    """conv{1,2,3}d(x [B, C, *spatial], w, b, stride, padding, dilation, groups) on image
    tokens on their grid (or on a token axis among the spatial axes). The batch axis may
    hold grid factors (frames folded into it); the channel axis may not. A spatial axis
    holding the grid must keep its size (stride 1, `same` padding): with a 1-wide kernel
    there the op is token-wise, with a wider one it mixes neighbouring tokens and runs
    on the whole grid (a MixingSite)."""
    x, w = node.args[0], arg(node, 1, "weight")
    if any(p.ax(a) is not None for a in node.all_input_nodes if a is not x):
        p.fail(node, "convolution weights depend on image tokens")
    g = operand_grid(p, node, x)
    in_shape, out_shape = tuple(p.tensor(node, x).shape), tuple(p.tensor(node, node).shape)
    if 1 in token_grid.grid_dims(g):
        p.fail(node, "convolution over channels that hold image tokens")
    kernel = tuple(p.tensor(node, w).shape[2:])
    stride, padding = arg(node, 3, "stride", 1), arg(node, 4, "padding", 0)
    for d in token_grid.grid_dims(g):
        if d > 0 and out_shape[d] != in_shape[d]:
            p.fail(node, f"{name} with stride {stride} and padding {padding!r} gives {out_shape[d]} "
                   f"positions on axis {d} for the {in_shape[d]} of the token grid: its output is not "
                   "one per token")
    out = token_grid.resized(g, out_shape)
    if not any(d > 1 for d in token_grid.grid_dims(g)):
        return token_grid.as_token_axis(out)       # tokens on the batch axis only
    pointwise = (all(k == 1 for k in kernel) and arg(node, 6, "groups", 1) == 1
                 and every(stride, 1) and every(padding, 0))
    if pointwise:
        p.plan.literals.append(PointwiseConv(node))
        return token_grid.as_token_axis(out)
    return mix(p, node, [(x, g)], out)


def mix(p: Propagation, node: fx.Node, operands, output=None):
    """Record a token-mixing op (plan.MixingSite): its token-holding operands are
    completed from caches of every image token; its result holds no image token
    (`output` None: a sum over them) or holds them on `output` (a convolution's grid)."""
    if any(isinstance(t, TokenAxis) and not t.layout.is_image_only for _, t in operands) and output is not None:
        p.fail(node, "a token-mixing op over a joint sequence whose result holds its tokens")
    p.plan.mixing.append(MixingSite(node, tuple(MixedOperand(a, t) for a, t in operands), output))
    return None if output is None else token_grid.as_token_axis(output)


def every(spec, want: int) -> bool:
    """A conv's stride or padding `spec` (an int for every axis, a tuple, or "valid" /
    "same") is `want` on every axis."""
    if isinstance(spec, str):
        return spec == "valid" and want == 0
    return all(v == want for v in ([spec] if isinstance(spec, int) else spec))
