"""Token rules for ops that work on each token alone, or on one axis other than the tokens:
element-wise ops (with broadcast tables), linear, norms, softmax, reductions, repeats of
other axes, matmul; and the ops that place tokens by a runtime index, which fail.

    [B, N, C] + pos_embed [1, N, C]     token-wise; pos_embed is a table gathered with the tokens
    linear(x [B, N, C], W)              token-wise over C
    sum(x [B, N, C], dim=1)             mixes the tokens: a MixingSite (grid.mix)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from ..nodes import arg, normal_dim, shape_args, value
from ..plan import TableGather, TokenAxis
from .grid import mix
from .op_names import DATA_FIRST_ONLY, ORDER_DEPENDENT

if TYPE_CHECKING:
    from ..token_propagation import Propagation


def pointwise(p: Propagation, node: fx.Node, name: str):
    out_ndim = p.ndim(node, node)
    operands = [node.args[0]] if name in DATA_FIRST_ONLY else list(node.args) + list(node.kwargs.values())
    operands = [a for a in operands if isinstance(a, fx.Node)]
    aligned = None
    for a in operands:
        t = p.ax(a)
        if isinstance(t, TokenAxis):
            cand = TokenAxis(out_ndim - p.ndim(node, a) + t.dim, t.layout)
            if aligned is not None and aligned != cand:
                p.fail(node, f"operands disagree on the token axis ({aligned} vs {cand})")
            aligned = cand
        elif t is not None:
            p.fail(node, "a tuple of tensors used as a pointwise operand")
    if aligned is None:
        if name in DATA_FIRST_ONLY:
            # `emb.type_as(hidden_states)`: the token-carrying argument only gives the
            # dtype (or device); the result holds no image tokens
            return None
        p.stray_tokens(node, "an element-wise operand")
    for a in operands:
        # a recorded scalar broadcasts; a node with nothing recorded cannot be checked
        if p.ax(a) is None and (value(a) is None or isinstance(value(a), torch.Tensor)):
            table_or_broadcast(p, node, a, aligned, out_ndim)
    return aligned


def table_or_broadcast(p: Propagation, node: fx.Node, a: fx.Node, axis: TokenAxis, out_ndim: int):
    v = p.tensor(node, a)
    local = axis.dim - (out_ndim - v.dim())
    if local < 0:
        return
    size = v.shape[local]
    if size == 1 and axis.layout.full_length != 1:
        return
    if size == axis.layout.full_length:
        p.plan.tables.append(TableGather(node, a, local, axis.layout))
        return
    p.fail(node, f"operand {a.name} has size {size} on the token axis, which is neither 1 "
           f"nor the {axis.layout.full_length} tokens of {axis.layout}")


def linear(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    if any(p.ax(a) is not None for a in list(node.args[1:]) + list(node.kwargs.values())):
        p.fail(node, "weights depend on image tokens")
    t = p.token_axis(node, x)
    if t.dim == p.ndim(node, x) - 1:
        p.fail(node, "linear over the token axis")
    return t


def norm(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    shape = arg(node, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list)) else 1
    if any(p.ax(a) is not None for a in list(node.args[2:]) + list(node.kwargs.values())
           if isinstance(a, fx.Node)):
        p.fail(node, "norm weights depend on image tokens")
    t = p.token_axis(node, x)
    if t.dim >= p.ndim(node, x) - k:
        p.fail(node, "normalisation over the token axis")
    return t


def softmax(p: Propagation, node: fx.Node, name: str):
    t = p.token_axis(node, node.args[0])
    d = arg(node, 1, "dim")
    if not isinstance(d, int):
        p.fail(node, f"softmax with dim={d!r} (an explicit int is needed)")
    d = normal_dim(d, p.ndim(node, node.args[0]))
    if d == t.dim:
        p.fail(node, "softmax over the token axis")
    return t


def reduction(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    t = p.token_axis(node, x)
    ndim = p.ndim(node, x)
    dims = arg(node, 1, "dim")
    if dims is None or isinstance(dims, fx.Node):
        p.fail(node, "reduction over image tokens (all dimensions)")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        p.fail(node, f"reduction over dims {dims!r} (ints are needed)")
    dims = [normal_dim(d, ndim) for d in dims]
    if t.dim in dims and name in ORDER_DEPENDENT:
        p.fail(node, f"{name} over image tokens: each output token reads the tokens before it")
    if not isinstance(value(node), torch.Tensor):
        p.fail(node, "reduction with several outputs")
    if t.dim in dims:
        # a sum over every image token (SanaVideo's linear-attention normaliser): its
        # result holds no image token and needs all of them
        return mix(p, node, [(x, t)])
    keep = arg(node, 2, "keepdim", False)
    return TokenAxis(t.dim if keep else t.dim - sum(d < t.dim for d in dims), t.layout)


def placed_by_index(p: Propagation, node: fx.Node, name: str):
    """index_copy(buf, dim, index, x) and kin (index_add, scatter, index_select, gather)
    along a token axis: the positions come from a tensor (MiniMax-H3 writes its video
    tokens into a joint [text | audio | video] sequence at `video_indices`, an input), so
    which token sits where is data. Not followed, with that reason; along another axis,
    not followed either (not known to be token-wise)."""
    d = arg(node, 1, "dim")
    carrier = next(a for a in node.all_input_nodes if isinstance(p.ax(a), TokenAxis))
    if not isinstance(d, int) or normal_dim(d, p.ndim(node, carrier)) != p.ax(carrier).dim:
        p.fail(node, "this op on image tokens is not known to be token-wise")
    index = arg(node, 2, "index")
    where = f"given by {index.name}" if isinstance(index, fx.Node) else "given by a tensor"
    p.fail(node, f"{name} along the token axis moves image tokens to or from positions {where}: "
           "which token sits where is data, which the token analysis does not follow")


def repeat_interleave(p: Propagation, node: fx.Node, name: str):
    """repeat_interleave(k, 2, dim=1)  [B, 2, N, D] -> [B, 4, N, D]: token-wise when `dim`
    is not the token axis and `repeats` an int; along the token axis (or flattened, no
    dim) it moves tokens to other positions."""
    x = node.args[0]
    t = p.token_axis(node, x)
    repeats, d = arg(node, 1, "repeats"), arg(node, 2, "dim")
    if isinstance(repeats, fx.Node) and p.ax(repeats) is not None:
        p.stray_tokens(node, "the tensor it repeats")
    if d is None:
        p.fail(node, "repeat_interleave without dim flattens the token axis")
    if not isinstance(d, int):
        p.fail(node, f"repeat_interleave along dim={d!r} (an int is needed)")
    if normal_dim(d, p.ndim(node, x)) == t.dim:
        p.fail(node, "repeat_interleave along the token axis")
    if not isinstance(repeats, int):
        p.fail(node, f"repeat_interleave with repeats={getattr(repeats, 'name', repeats)!r} "
               "(an int is needed)")
    return t


def repeat(p: Propagation, node: fx.Node, name: str):
    """x.repeat(1, 1, 2, 1) / tile: token-wise when the token axis is repeated once; extra
    leading sizes add dims in front (repeat), missing ones are 1 (tile)."""
    x = node.args[0]
    t = p.token_axis(node, x)
    ndim = p.ndim(node, x)
    if name == "tile":
        sizes = arg(node, 1, "dims")
    elif "repeats" in node.kwargs:
        sizes = node.kwargs["repeats"]
    else:
        sizes = shape_args(node)
    if not isinstance(sizes, (tuple, list)) or not all(isinstance(s, int) for s in sizes):
        p.fail(node, f"{name} with sizes {sizes!r} (ints are needed)")
    sizes = [1] * (ndim - len(sizes)) + list(sizes)
    dim = len(sizes) - ndim + t.dim
    if sizes[dim] != 1:
        p.fail(node, f"{name} along the token axis")
    return TokenAxis(dim, t.layout)


def matmul(p: Propagation, node: fx.Node, name: str):
    """a @ b over the last axis of a and the second last of b:

        token-wise   a [.., N, K] @ W [K, M]      tokens of a on another axis
                     S [.., M, K] @ q [.., K, N]  tokens of b on its last axis
        mixing       v [.., D, N] @ k [.., N, D]  contracts over the image tokens (Sana's
                                                  linear attention): a token-mixing op
        otherwise (q @ k^T: tokens on both sides, none contracted) not followed."""
    a, b = node.args[:2]
    ta, tb = p.ax(a), p.ax(b)
    nda, ndb = p.ndim(node, a), p.ndim(node, b)
    if nda < 2 or ndb < 2:
        p.fail(node, "matmul of a vector holding image tokens")
    contracted = [(x, t) for x, t, d in ((a, ta, nda - 1), (b, tb, ndb - 2))
                  if isinstance(t, TokenAxis) and t.dim == d]
    if contracted and len(contracted) == sum(t is not None for t in (ta, tb)):
        return mix(p, node, contracted)
    if ta is not None and tb is not None:
        p.fail(node, "matmul contracts over image tokens (attention written by hand is "
               "not recognised; use F.scaled_dot_product_attention)")
    if tb is not None:
        tb = p.token_axis(node, b)
        if tb.dim != ndb - 1:
            p.fail(node, "matmul with image tokens on a batch axis of its second operand")
        return TokenAxis(p.ndim(node, node) - 1, tb.layout)
    ta = p.token_axis(node, a)
    if ta.dim == nda - 1:
        p.fail(node, "matmul contracts over the token axis")
    return TokenAxis(p.ndim(node, node) - nda + ta.dim, ta.layout)
