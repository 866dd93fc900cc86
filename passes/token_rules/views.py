"""Token rules for layout ops: views and reshapes, permutations, (un)squeeze, indexing and
slicing, in-place writes into slices, concatenation, stacking and splitting. They move the
token axis, and record the literals tied to the token count that the rewrite changes:

    view(x [B, N, H*D], (B, N, H, D))          ShapeLiteral: N -> n
    cat([txt [B, T, C], img [B, N, C]], 1)    a joint layout [text T | image N]
    split_with_sizes(h, [T, N], 1)             SplitSizes: [T, n]
    h[:, T:]                                   SegmentSlice: the image segment
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch.fx as fx

from ..nodes import arg, is_tensor_node, normal_dim, shape_args, value
from ..plan import (IMAGE, TEXT, Layout, Segment, SegmentSlice, ShapeLiteral, SplitSizes, SqueezeDims,
                    TableGather, TokenAxis)
from .frames import split_into_frames
from .grid import split_into_grid
from .permutation import permutation

if TYPE_CHECKING:
    from ..token_propagation import Propagation


def reshape(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    t = p.token_axis(node, x)
    dim = map_reshape(p, node, tuple(p.tensor(node, x).shape), tuple(p.tensor(node, node).shape), t)
    shape = shape_args(node)
    if len(shape) != p.ndim(node, node):
        p.fail(node, f"target shape {shape!r} is not a list of sizes")
    if shape[dim] != -1:
        p.plan.literals.append(ShapeLiteral(node, dim, t.layout))
    return TokenAxis(dim, t.layout)


def map_reshape(p: Propagation, node, in_shape, out_shape, t: TokenAxis) -> int:
    prefix = math.prod(in_shape[:t.dim])
    size = in_shape[t.dim]
    for j in range(len(out_shape)):
        if math.prod(out_shape[:j]) == prefix and out_shape[j] == size:
            if math.prod(out_shape[j + 1:]) == math.prod(in_shape[t.dim + 1:]):
                return j
    p.fail(node, f"reshape {in_shape} -> {out_shape} splits or merges the token axis")


def expand(p: Propagation, node: fx.Node, name: str):
    t = p.token_axis(node, node.args[0])
    out_ndim = p.ndim(node, node)
    dim = out_ndim - p.ndim(node, node.args[0]) + t.dim
    shape = shape_args(node)
    if len(shape) != out_ndim:
        p.fail(node, f"target shape {shape!r} is not a list of sizes")
    if shape[dim] != -1:
        p.plan.literals.append(ShapeLiteral(node, dim, t.layout, use_minus_one=True))
    return TokenAxis(dim, t.layout)


def flatten(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    t = p.token_axis(node, x)
    shape = p.tensor(node, x).shape
    ndim = len(shape)
    start = normal_dim(arg(node, 1, "start_dim", 0), ndim)
    end = normal_dim(arg(node, 2, "end_dim", -1), ndim)
    if t.dim < start:
        return t
    if t.dim > end:
        return TokenAxis(t.dim - (end - start), t.layout)
    if any(shape[d] != 1 for d in range(start, end + 1) if d != t.dim):
        p.fail(node, "flatten merges the token axis with other dimensions")
    p.fail(node, "flatten over the token axis")  # size-1 merges: rare, keep it simple


def unflatten(p: Propagation, node: fx.Node, name: str):
    t = p.token_axis(node, node.args[0])
    d = normal_dim(arg(node, 1, "dim"), p.ndim(node, node.args[0]))
    sizes = arg(node, 2, "sizes")
    if d == t.dim and len(sizes) > 2 and t.layout.is_image_only:
        return split_into_grid(p, node, t, len(sizes))
    if d == t.dim:
        return split_into_frames(p, node, t, sizes)
    return TokenAxis(t.dim + (len(sizes) - 1 if d < t.dim else 0), t.layout)


def view_as_complex(p: Propagation, node: fx.Node, name: str):
    """[.., N, .., D, 2] real -> [.., N, .., D] complex (complex RoPE): the trailing pair
    becomes one complex number, every other axis is kept."""
    x = node.args[0]
    t = p.token_axis(node, x)
    shape = p.tensor(node, x).shape
    if t.dim == len(shape) - 1:
        p.fail(node, "view_as_complex of the token axis (its last dim)")
    return t


def view_as_real(p: Propagation, node: fx.Node, name: str):
    """[.., N, .., D] complex -> [.., N, .., D, 2] real: a trailing axis is added."""
    return p.token_axis(node, node.args[0])


def permute(p: Propagation, node: fx.Node, name: str):
    t = p.token_axis(node, node.args[0])
    return TokenAxis(permutation(p, node, name).index(t.dim), t.layout)


def unsqueeze(p: Propagation, node: fx.Node, name: str):
    t = p.token_axis(node, node.args[0])
    d = normal_dim(arg(node, 1, "dim"), p.ndim(node, node))
    return TokenAxis(t.dim + (1 if d <= t.dim else 0), t.layout)


def squeeze(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    t = p.token_axis(node, x)
    shape = p.tensor(node, x).shape
    dims = arg(node, 1, "dim")
    if dims is None:
        dims = tuple(d for d, s in enumerate(shape) if s == 1 and d != t.dim)
        p.plan.literals.append(SqueezeDims(node, dims))
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [normal_dim(d, len(shape)) for d in dims if shape[normal_dim(d, len(shape))] == 1]
    if t.dim in dims:
        p.fail(node, "squeeze of the token axis")
    return TokenAxis(t.dim - sum(d < t.dim for d in dims), t.layout)


def getitem(p: Propagation, node: fx.Node, name: str):
    src, index = node.args
    t = p.ax(src)
    if isinstance(t, tuple):
        if not isinstance(index, int) or not -len(t) <= index < len(t):
            p.fail(node, f"index {index!r} into a tuple of {len(t)} token-carrying outputs")
        return t[index]
    t = p.token_axis(node, src)
    return index_axis(p, node, src, index, t)


def index_axis(p: Propagation, node: fx.Node, src: fx.Node, index, t: TokenAxis):
    """Token axis of `src[index]` (basic indexing only)."""
    if isinstance(index, fx.Node) or (isinstance(index, (tuple, list))
                                      and any(isinstance(i, fx.Node) for i in index)):
        p.fail(node, "tensor indexing of a token-carrying tensor")
    items = list(index) if isinstance(index, tuple) else [index]
    ndim = p.ndim(node, src)
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    in_dim, out_dim, result = 0, 0, None
    for pos, it in enumerate(items):
        if it is Ellipsis:
            skip = ndim - consumed
            if in_dim <= t.dim < in_dim + skip:
                result = TokenAxis(out_dim + t.dim - in_dim, t.layout)
            in_dim += skip
            out_dim += skip
        elif it is None:
            out_dim += 1
        elif isinstance(it, int):
            if in_dim == t.dim:
                p.fail(node, "integer index on the token axis")
            in_dim += 1
        elif isinstance(it, slice):
            if in_dim == t.dim:
                result = token_slice(p, node, pos, it, t, out_dim)
            in_dim += 1
            out_dim += 1
        else:
            p.fail(node, f"index {it!r} on a token-carrying tensor")
    if in_dim <= t.dim:  # trailing dims not indexed
        result = TokenAxis(out_dim + t.dim - in_dim, t.layout)
    return result


def token_slice(p: Propagation, node, pos, sl: slice, t: TokenAxis, out_dim: int):
    if sl.step not in (None, 1):
        p.fail(node, "strided slice of the token axis")
    if not all(b is None or isinstance(b, int) for b in (sl.start, sl.stop)):
        p.fail(node, f"slice {sl.start!r}:{sl.stop!r} of the token axis has a computed "
               "bound")
    full = t.layout.full_length
    start, stop, _ = sl.indices(full)
    if (start, stop) == (0, full):
        return TokenAxis(out_dim, t.layout)
    for k, (off, seg) in enumerate(zip(t.layout.offsets(), t.layout.segments)):
        if (start, stop) == (off, off + seg.size):
            p.plan.literals.append(SegmentSlice(node, pos, t.layout, k))
            return TokenAxis(out_dim, Layout.image(seg.size)) if seg.kind == IMAGE else None
    p.fail(node, f"slice {start}:{stop} of the token axis {t.layout} is not one segment")


def setitem(p: Propagation, node: fx.Node, name: str):
    """In-place write `target[index] = val`: Wan's RoPE writes even/odd channels of all
    tokens; CogVideoX's writes the image segment `q[:, :, T:]` of a joint sequence."""
    target, index, val = node.args
    t = p.ax(target)
    if not isinstance(t, TokenAxis):
        p.fail(node, "image tokens written into a tensor without a token axis")
    view = index_axis(p, node, target, index, t)   # None: the text segment
    vt = p.ax(val) if is_tensor_node(val) else None
    if vt is not None and (view is None or not isinstance(vt, TokenAxis) or vt.layout != view.layout):
        p.fail(node, "the written value holds other tokens than the slice it fills")
    return None


def cat(p: Propagation, node: fx.Node, name: str):
    tensors = list(arg(node, 0, "tensors"))
    dim = arg(node, 1, "dim", 0)
    if not isinstance(dim, int):
        p.fail(node, f"cat along dim={dim!r} (an int is needed)")
    ndim = p.ndim(node, node)
    dim = normal_dim(dim, ndim)
    axes = [p.ax(a) for a in tensors]
    tok = [a for a in axes if a is not None]
    if not tok:
        p.stray_tokens(node, "the tensors it concatenates")
    if any(not isinstance(a, TokenAxis) for a in tok):
        p.fail(node, "cat of tuples")
    if all(a.dim != dim for a in tok):
        first = tok[0]
        if any(a != first for a in tok):
            p.fail(node, "cat of tensors with different token axes")
        for a, x in zip(axes, tensors):
            if a is None:
                if p.tensor(node, x).shape[first.dim] != first.layout.full_length:
                    p.fail(node, f"{x.name} has no token axis to match")
                p.plan.tables.append(TableGather(node, x, first.dim, first.layout))
        return first
    if any(a.dim != dim for a in tok) or len(tok) > 1:
        p.fail(node, "cat of several image streams on the token axis")
    segments: list[Segment] = []
    for a, x in zip(axes, tensors):
        if a is None:
            segments.append(Segment(TEXT, p.tensor(node, x).shape[dim]))
        else:
            segments.extend(a.layout.segments)
    return TokenAxis(dim, Layout(tuple(segments)))


def stack(p: Propagation, node: fx.Node, name: str):
    tensors = list(arg(node, 0, "tensors"))
    dim = normal_dim(arg(node, 1, "dim", 0), p.ndim(node, node))
    axes = [p.ax(a) for a in tensors]
    first = next((a for a in axes if a is not None), None)
    if first is None:
        p.stray_tokens(node, "the tensors it stacks")
    if not isinstance(first, TokenAxis):
        p.fail(node, "stack of tuples")
    if any(a != first for a in axes):
        p.fail(node, "stack of tensors with different token axes")
    return TokenAxis(first.dim + (1 if dim <= first.dim else 0), first.layout)


def split(p: Propagation, node: fx.Node, name: str):
    x = node.args[0]
    t = p.token_axis(node, x)
    ndim = p.ndim(node, x)
    dim_pos = 1 if name == "unbind" else 2
    d = arg(node, dim_pos, "dim", 0)
    if not isinstance(d, int):
        p.fail(node, f"{name} along dim={d!r} (an int is needed)")
    d = normal_dim(d, ndim)
    outs = value(node)
    if not isinstance(outs, (tuple, list)):
        p.fail(node, "its result has no recorded tuple of tensors")
    if d != t.dim:
        if name == "unbind":
            return tuple(TokenAxis(t.dim - (1 if d < t.dim else 0), t.layout) for _ in outs)
        return tuple(t for _ in outs)
    sizes = arg(node, 1, "split_size_or_sections", None)
    if name in ("split", "split_with_sizes") and isinstance(sizes, (list, tuple)):
        if list(sizes) == [s.size for s in t.layout.segments]:
            p.plan.literals.append(SplitSizes(node, t.layout))
            return tuple(TokenAxis(d, Layout.image(s.size)) if s.kind == IMAGE else None
                         for s in t.layout.segments)
    p.fail(node, f"{name} of the token axis not along its text/image segments")


def einsum(p: Propagation, node: fx.Node, name: str):
    eq = node.args[0]
    if not isinstance(eq, str):
        p.fail(node, "einsum in the sublist form (an equation string is needed)")
    operands = [a for a in node.args[1:]]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    if len(operands) != 1 or "," in lhs or sorted(lhs) != sorted(rhs) or "." in lhs:
        p.fail(node, "einsum over image tokens that is not a permutation")
    t = p.token_axis(node, operands[0])
    return TokenAxis(rhs.index(lhs[t.dim]), t.layout)


def like(p: Propagation, node: fx.Node, name: str):
    """zeros_like(x) and kin: shaped as x, token axis included."""
    return p.ax(node.args[0])


def new_of_size(p: Propagation, node: fx.Node, name: str):
    """x.new_zeros(size) and kin: only x's dtype and device, no token values."""
    return None
