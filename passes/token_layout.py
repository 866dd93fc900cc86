"""token_layout: find the image-token region of a dynamo graph and label every token axis.

Analysis only: the graph is not changed; the returned `TokenPlan` tells the rewriting passes
what to do. Raises `Unrewritable` with a reason when anything is not provably safe.

    exit   : walk back from the graph output through layout-only ops (unpatchify) to the
             last computed tensor  [B, N, C]; N = number of image tokens
    entry  : the first tensor derived from the `hidden_states` input shaped [B, N, C]
             (after patch and position embedding; for FLUX the packed input itself)
    axes   : forward propagation, op by op, of TokenAxis(dim, layout) from the entry to the
             exit; joint sequences appear where text is concatenated on the token axis

Example (SD3, N = 64, text 5):

    latent_1 = transpose(flatten(conv2d(x)), 1, 2)        [1, 64, 16]  <- entry  axis 1 [image 64]
    add      = latent_1 + pos_embed                        [1, 64, 16]  table pos_embed gathered
    q        = cat([img_q, txt_q], dim=2)                  [1, 2, 69, 8] axis 2 [image 64 | text 5]
    attn     = sdpa(q, k, v)                               self attention: K/V completed
    h        = attn_out[:, :64]                            SegmentSlice -> [:, :n]
    out      = linear(x_4)                                 [1, 64, 16]  <- exit
    reshape(out, (1, 8, 8, 2, 2, 4))                       unpatchify: runs on the full output
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from .plan import (IMAGE, TEXT, AttentionSite, Layout, Segment, SegmentSlice, ShapeLiteral,
                   SplitSizes, SqueezeDims, TableGather, TokenAxis, TokenPlan, Unrewritable)

MAX_ENTRY_CANDIDATES = 6


def value(node: Any):
    """The example value (fake tensor, tuple or int) dynamo recorded for `node`."""
    if not isinstance(node, fx.Node):
        return node
    return node.meta.get("example_value", node.meta.get("val"))


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _is_tensor_node(a: Any) -> bool:
    return isinstance(a, fx.Node) and isinstance(value(a), torch.Tensor)


# --------------------------------------------------------------------------- op tables
_POINTWISE_NAMES = {
    "add", "sub", "mul", "truediv", "div", "floordiv", "pow", "neg", "iadd", "isub", "imul",
    "itruediv", "exp", "sin", "cos", "tanh", "sigmoid", "sqrt", "rsqrt", "abs", "clamp",
    "gelu", "silu", "relu", "mish", "erf", "log", "square", "reciprocal", "where", "lerp",
    "dropout", "float", "half", "bfloat16", "double", "contiguous", "clone", "detach",
    "add_", "sub_", "mul_", "div_", "clamp_", "masked_fill", "minimum", "maximum",
    "addcmul", "sign", "softplus", "leaky_relu", "elu", "hardtanh", "nan_to_num",
}
_DATA_FIRST_ONLY = {"to", "type_as", "type", "float", "half", "bfloat16", "double",
                    "contiguous", "clone", "detach", "dropout"}
_LIKE = {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "prod",
               "logsumexp", "argmax", "argmin", "all", "any", "cumsum", "var_mean"}
_LAYOUT_ONLY = {"view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten",
                "squeeze", "unsqueeze", "float", "to", "type_as", "einsum", "movedim"}


def _normal_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _arg(node: fx.Node, pos: int, name: str, default=None):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _shape_args(node: fx.Node) -> list:
    """The target shape of view/reshape/expand as a flat list, whichever call form."""
    if "shape" in node.kwargs:
        return list(node.kwargs["shape"])
    if "size" in node.kwargs:
        return list(node.kwargs["size"])
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return list(rest[0])
    return list(rest)


# --------------------------------------------------------------------------- exit / entry
def _find_exit(gm: fx.GraphModule) -> fx.Node:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    results = out.args[0]
    first = results[0] if isinstance(results, (tuple, list)) else results
    if not _is_tensor_node(first):
        raise Unrewritable("the graph's first output is not a tensor")
    node = first
    while (node.op in ("call_method", "call_function") and op_name(node) in _LAYOUT_ONLY
           and sum(_is_tensor_node(a) for a in node.args) == 1):
        node = next(a for a in node.args if _is_tensor_node(a))
    v = value(node)
    if v.dim() != 3:
        raise Unrewritable(f"the last computed tensor before the output ({node.name}, shape "
                           f"{tuple(v.shape)}) is not [batch, tokens, channels]")
    return node


def _hidden_states_input(gm: fx.GraphModule) -> fx.Node:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in placeholders:
        name = n.name.lower()
        if "hidden_states" in name and "encoder" not in name and _is_tensor_node(n):
            return n
    raise Unrewritable("no `hidden_states` input found in the graph (is the whole "
                       "transformer forward captured in this graph?)")


def _entry_candidates(gm: fx.GraphModule, source: fx.Node, exit_node: fx.Node) -> list[fx.Node]:
    batch = value(source).shape[0]
    tokens = value(exit_node).shape[1]
    derived = {source}
    out = []
    for n in gm.graph.nodes:
        if n is exit_node:
            break
        if n is not source and not any(a in derived for a in n.all_input_nodes):
            continue
        derived.add(n)
        v = value(n)
        if isinstance(v, torch.Tensor) and v.dim() == 3 and v.shape[0] == batch and v.shape[1] == tokens:
            out.append(n)
    return out[:MAX_ENTRY_CANDIDATES]


# --------------------------------------------------------------------------- propagation
class _Propagation:
    """Labels token axes from `entry` forward; records literals, tables and attention."""

    def __init__(self, gm: fx.GraphModule, entry: fx.Node, exit_node: fx.Node):
        self.gm = gm
        n_img = value(exit_node).shape[1]
        self.plan = TokenPlan(num_image_tokens=n_img, entry=entry, exit=exit_node)
        self.axes: dict = {}
        self.visited = 0

    # -- helpers
    def ax(self, a) -> Any:
        return self.axes.get(a) if isinstance(a, fx.Node) else None

    def fail(self, node: fx.Node, why: str):
        error = Unrewritable(f"{node.name} ({op_name(node)}): {why}")
        error.progress = self.visited   # how far this entry candidate got
        raise error

    def run(self) -> TokenPlan:
        plan = self.plan
        started = False
        for node in self.gm.graph.nodes:
            if node is plan.entry:
                self.axes[node] = TokenAxis(1, Layout.image(plan.num_image_tokens))
                started = True
                if node is plan.exit:
                    break
                continue
            if not started or node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                for a in node.all_input_nodes:
                    if self.ax(a) is not None:
                        self.fail(node, f"image tokens of {a.name} reach the output without "
                                  "passing the exit")
                continue
            inputs = [a for a in node.all_input_nodes if self.ax(a) is not None]
            if not inputs:
                continue
            self.axes[node] = self.visit(node)
            self.visited += 1
            if node is plan.exit:
                got = self.axes[node]
                if not (isinstance(got, TokenAxis) and got.dim == 1 and got.layout.is_image_only):
                    self.fail(node, f"the exit does not hold image tokens on axis 1 (found {got})")
                self.axes[node] = None  # downstream uses the scattered full tensor
        else:
            if not started:
                raise Unrewritable("the entry was not reached")
        if not any(site.kind == "self" for site in plan.attention):
            error = Unrewritable(f"no self-attention over image tokens between the entry "
                                 f"{plan.entry.name} and the exit {plan.exit.name}")
            error.progress = 0       # a later candidate that skips the blocks is no entry
            raise error
        plan.axes = {k: v for k, v in self.axes.items() if v is not None}
        plan.axes[plan.exit] = TokenAxis(1, Layout.image(plan.num_image_tokens))
        return plan

    # -- dispatch
    def visit(self, node: fx.Node):
        name = op_name(node)
        if node.target is operator.getitem:
            return self.getitem(node)
        if node.target is operator.setitem:
            return self.setitem(node)
        if node.target is F.scaled_dot_product_attention:
            return self.attention(node)
        if name in ("linear",):
            return self.linear(node)
        if name in ("layer_norm", "rms_norm"):
            return self.norm(node)
        if name in ("softmax", "log_softmax"):
            return self.softmax(node)
        if name in ("view", "reshape"):
            return self.reshape(node)
        if name == "expand":
            return self.expand(node)
        if name == "flatten":
            return self.flatten(node)
        if name == "unflatten":
            return self.unflatten(node)
        if name in ("transpose", "swapaxes", "permute", "movedim"):
            return self.permute(node, name)
        if name == "unsqueeze":
            return self.unsqueeze(node)
        if name == "squeeze":
            return self.squeeze(node)
        if name == "cat" or name == "concat" or name == "concatenate":
            return self.cat(node)
        if name == "stack":
            return self.stack(node)
        if name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
            return self.split(node, name)
        if name == "einsum":
            return self.einsum(node)
        if name in ("matmul", "bmm", "mm"):
            return self.matmul(node)
        if name in _REDUCTIONS:
            return self.reduction(node)
        if name in _LIKE:
            return self.ax(node.args[0])
        if name in _POINTWISE_NAMES or name in _DATA_FIRST_ONLY:
            return self.pointwise(node, name)
        self.fail(node, "this op on image tokens is not known to be token-wise")

    # -- pointwise with broadcasting; non-token operands over the full axis are tables
    def pointwise(self, node: fx.Node, name: str):
        out_ndim = value(node).dim()
        operands = [node.args[0]] if name in _DATA_FIRST_ONLY else list(node.args) + list(node.kwargs.values())
        operands = [a for a in operands if _is_tensor_node(a)]
        aligned = None
        for a in operands:
            t = self.ax(a)
            if isinstance(t, TokenAxis):
                cand = TokenAxis(out_ndim - value(a).dim() + t.dim, t.layout)
                if aligned is not None and aligned != cand:
                    self.fail(node, f"operands disagree on the token axis ({aligned} vs {cand})")
                aligned = cand
            elif t is not None:
                self.fail(node, "a tuple of tensors used as a pointwise operand")
        for a in operands:
            if self.ax(a) is None:
                self.table_or_broadcast(node, a, aligned, out_ndim)
        return aligned

    def table_or_broadcast(self, node: fx.Node, a: fx.Node, axis: TokenAxis, out_ndim: int):
        v = value(a)
        local = axis.dim - (out_ndim - v.dim())
        if local < 0:
            return
        size = v.shape[local]
        if size == 1 and axis.layout.full_length != 1:
            return
        if size == axis.layout.full_length:
            self.plan.tables.append(TableGather(node, a, local, axis.layout))
            return
        self.fail(node, f"operand {a.name} has size {size} on the token axis, which is neither 1 "
                  f"nor the {axis.layout.full_length} tokens of {axis.layout}")

    # -- channel-wise ops
    def linear(self, node: fx.Node):
        x = node.args[0]
        t = self.ax(x)
        if any(self.ax(a) is not None for a in node.args[1:]):
            self.fail(node, "weights depend on image tokens")
        if not isinstance(t, TokenAxis) or t.dim == value(x).dim() - 1:
            self.fail(node, "linear over the token axis")
        return t

    def norm(self, node: fx.Node):
        x = node.args[0]
        t = self.ax(x)
        shape = _arg(node, 1, "normalized_shape")
        k = len(shape) if isinstance(shape, (tuple, list)) else 1
        if any(self.ax(a) is not None for a in node.args[2:] if isinstance(a, fx.Node)):
            self.fail(node, "norm weights depend on image tokens")
        if t.dim >= value(x).dim() - k:
            self.fail(node, "normalisation over the token axis")
        return t

    def softmax(self, node: fx.Node):
        t = self.ax(node.args[0])
        d = _normal_dim(_arg(node, 1, "dim"), value(node.args[0]).dim())
        if d == t.dim:
            self.fail(node, "softmax over the token axis")
        return t

    def reduction(self, node: fx.Node):
        x = node.args[0]
        t = self.ax(x)
        ndim = value(x).dim()
        dims = _arg(node, 1, "dim")
        if dims is None or isinstance(dims, fx.Node):
            self.fail(node, "reduction over image tokens (all dimensions)")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [_normal_dim(d, ndim) for d in dims]
        if t.dim in dims:
            self.fail(node, "reduction over image tokens")
        if not isinstance(value(node), torch.Tensor):
            self.fail(node, "reduction with several outputs")
        keep = _arg(node, 2, "keepdim", False)
        return TokenAxis(t.dim if keep else t.dim - sum(d < t.dim for d in dims), t.layout)

    # -- views
    def reshape(self, node: fx.Node):
        x = node.args[0]
        t = self.ax(x)
        dim = self.map_reshape(node, tuple(value(x).shape), tuple(value(node).shape), t)
        shape = _shape_args(node)
        if shape[dim] != -1:
            self.plan.literals.append(ShapeLiteral(node, dim, t.layout))
        return TokenAxis(dim, t.layout)

    def map_reshape(self, node, in_shape, out_shape, t: TokenAxis) -> int:
        prefix = math.prod(in_shape[:t.dim])
        size = in_shape[t.dim]
        for j in range(len(out_shape)):
            if math.prod(out_shape[:j]) == prefix and out_shape[j] == size:
                if math.prod(out_shape[j + 1:]) == math.prod(in_shape[t.dim + 1:]):
                    return j
        self.fail(node, f"reshape {in_shape} -> {out_shape} splits or merges the token axis")

    def expand(self, node: fx.Node):
        t = self.ax(node.args[0])
        out_ndim = value(node).dim()
        dim = out_ndim - value(node.args[0]).dim() + t.dim
        shape = _shape_args(node)
        if shape[dim] != -1:
            self.plan.literals.append(ShapeLiteral(node, dim, t.layout, use_minus_one=True))
        return TokenAxis(dim, t.layout)

    def flatten(self, node: fx.Node):
        x = node.args[0]
        t = self.ax(x)
        shape = value(x).shape
        ndim = len(shape)
        start = _normal_dim(_arg(node, 1, "start_dim", 0), ndim)
        end = _normal_dim(_arg(node, 2, "end_dim", -1), ndim)
        if t.dim < start:
            return t
        if t.dim > end:
            return TokenAxis(t.dim - (end - start), t.layout)
        if any(shape[d] != 1 for d in range(start, end + 1) if d != t.dim):
            self.fail(node, "flatten merges the token axis with other dimensions")
        self.fail(node, "flatten over the token axis")  # size-1 merges: rare, keep it simple

    def unflatten(self, node: fx.Node):
        t = self.ax(node.args[0])
        d = _normal_dim(_arg(node, 1, "dim"), value(node.args[0]).dim())
        sizes = _arg(node, 2, "sizes")
        if d == t.dim:
            self.fail(node, "unflatten splits the token axis")
        return TokenAxis(t.dim + (len(sizes) - 1 if d < t.dim else 0), t.layout)

    def permute(self, node: fx.Node, name: str):
        t = self.ax(node.args[0])
        ndim = value(node.args[0]).dim()
        if name in ("transpose", "swapaxes"):
            a, b = (_normal_dim(d, ndim) for d in node.args[1:3])
            order = list(range(ndim))
            order[a], order[b] = order[b], order[a]
        elif name == "permute":
            dims = node.args[1:] if not isinstance(node.args[1], (tuple, list)) else node.args[1]
            if "dims" in node.kwargs:
                dims = node.kwargs["dims"]
            order = [_normal_dim(d, ndim) for d in dims]
        else:  # movedim(src, dst) with ints
            src, dst = (_normal_dim(d, ndim) for d in node.args[1:3])
            order = [d for d in range(ndim) if d != src]
            order.insert(dst, src)
        return TokenAxis(order.index(t.dim), t.layout)

    def unsqueeze(self, node: fx.Node):
        t = self.ax(node.args[0])
        d = _normal_dim(_arg(node, 1, "dim"), value(node).dim())
        return TokenAxis(t.dim + (1 if d <= t.dim else 0), t.layout)

    def squeeze(self, node: fx.Node):
        x = node.args[0]
        t = self.ax(x)
        shape = value(x).shape
        dims = _arg(node, 1, "dim")
        if dims is None:
            dims = tuple(d for d, s in enumerate(shape) if s == 1 and d != t.dim)
            self.plan.literals.append(SqueezeDims(node, dims))
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [_normal_dim(d, len(shape)) for d in dims if shape[_normal_dim(d, len(shape))] == 1]
        if t.dim in dims:
            self.fail(node, "squeeze of the token axis")
        return TokenAxis(t.dim - sum(d < t.dim for d in dims), t.layout)

    def getitem(self, node: fx.Node):
        src, index = node.args
        t = self.ax(src)
        if isinstance(t, tuple):
            return t[index]
        return self.index_axis(node, src, index, t, record=True)

    def index_axis(self, node: fx.Node, src: fx.Node, index, t: TokenAxis, record: bool):
        """Token axis of `src[index]` (basic indexing only)."""
        if isinstance(index, fx.Node) or (isinstance(index, (tuple, list))
                                          and any(isinstance(i, fx.Node) for i in index)):
            self.fail(node, "tensor indexing of a token-carrying tensor")
        items = list(index) if isinstance(index, tuple) else [index]
        ndim = value(src).dim()
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
                    self.fail(node, "integer index on the token axis")
                in_dim += 1
            elif isinstance(it, slice):
                if in_dim == t.dim:
                    result = self.token_slice(node, pos, it, t, out_dim, record)
                in_dim += 1
                out_dim += 1
            else:
                self.fail(node, f"index {it!r} on a token-carrying tensor")
        if in_dim <= t.dim:  # trailing dims not indexed
            result = TokenAxis(out_dim + t.dim - in_dim, t.layout)
        return result

    def token_slice(self, node, pos, sl: slice, t: TokenAxis, out_dim: int, record: bool):
        if sl.step not in (None, 1):
            self.fail(node, "strided slice of the token axis")
        full = t.layout.full_length
        start, stop, _ = sl.indices(full)
        if (start, stop) == (0, full):
            return TokenAxis(out_dim, t.layout)
        for k, (off, seg) in enumerate(zip(t.layout.offsets(), t.layout.segments)):
            if (start, stop) == (off, off + seg.size) and record:
                self.plan.literals.append(SegmentSlice(node, pos, t.layout, k))
                return TokenAxis(out_dim, Layout.image(seg.size)) if seg.kind == IMAGE else None
        self.fail(node, f"slice {start}:{stop} of the token axis {t.layout} is not one segment")

    def setitem(self, node: fx.Node):
        """In-place write `target[index] = val`: Wan's RoPE writes even/odd channels of all
        tokens; CogVideoX's writes the image segment `q[:, :, T:]` of a joint sequence."""
        target, index, val = node.args
        t = self.ax(target)
        if not isinstance(t, TokenAxis):
            self.fail(node, "image tokens written into a tensor without a token axis")
        view = self.index_axis(node, target, index, t, record=True)   # None: the text segment
        vt = self.ax(val) if _is_tensor_node(val) else None
        if vt is not None and (view is None or not isinstance(vt, TokenAxis) or vt.layout != view.layout):
            self.fail(node, "the written value holds other tokens than the slice it fills")
        return None

    def cat(self, node: fx.Node):
        tensors = list(_arg(node, 0, "tensors"))
        dim = _arg(node, 1, "dim", 0)
        ndim = value(node).dim()
        dim = _normal_dim(dim, ndim)
        axes = [self.ax(a) for a in tensors]
        tok = [a for a in axes if a is not None]
        if any(not isinstance(a, TokenAxis) for a in tok):
            self.fail(node, "cat of tuples")
        if all(a.dim != dim for a in tok):
            first = tok[0]
            if any(a != first for a in tok):
                self.fail(node, "cat of tensors with different token axes")
            for a, x in zip(axes, tensors):
                if a is None:
                    if value(x).shape[first.dim] != first.layout.full_length:
                        self.fail(node, f"{x.name} has no token axis to match")
                    self.plan.tables.append(TableGather(node, x, first.dim, first.layout))
            return first
        if any(a.dim != dim for a in tok) or len(tok) > 1:
            self.fail(node, "cat of several image streams on the token axis")
        segments: list[Segment] = []
        for a, x in zip(axes, tensors):
            if a is None:
                segments.append(Segment(TEXT, value(x).shape[dim]))
            else:
                segments.extend(a.layout.segments)
        return TokenAxis(dim, Layout(tuple(segments)))

    def stack(self, node: fx.Node):
        tensors = list(_arg(node, 0, "tensors"))
        dim = _normal_dim(_arg(node, 1, "dim", 0), value(node).dim())
        axes = [self.ax(a) for a in tensors]
        first = next(a for a in axes if a is not None)
        if any(a != first for a in axes):
            self.fail(node, "stack of tensors with different token axes")
        return TokenAxis(first.dim + (1 if dim <= first.dim else 0), first.layout)

    def split(self, node: fx.Node, name: str):
        x = node.args[0]
        t = self.ax(x)
        ndim = value(x).dim()
        dim_pos = 1 if name == "unbind" else 2
        d = _normal_dim(_arg(node, dim_pos, "dim", 0), ndim)
        outs = value(node)
        if d != t.dim:
            if name == "unbind":
                return tuple(TokenAxis(t.dim - (1 if d < t.dim else 0), t.layout) for _ in outs)
            return tuple(t for _ in outs)
        sizes = _arg(node, 1, "split_size_or_sections", None)
        if name in ("split", "split_with_sizes") and isinstance(sizes, (list, tuple)):
            if list(sizes) == [s.size for s in t.layout.segments]:
                self.plan.literals.append(SplitSizes(node, t.layout))
                return tuple(TokenAxis(d, Layout.image(s.size)) if s.kind == IMAGE else None
                             for s in t.layout.segments)
        self.fail(node, f"{name} of the token axis not along its text/image segments")

    def einsum(self, node: fx.Node):
        eq = node.args[0]
        operands = [a for a in node.args[1:]]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        lhs, _, rhs = eq.replace(" ", "").partition("->")
        if len(operands) != 1 or "," in lhs or sorted(lhs) != sorted(rhs) or "." in lhs:
            self.fail(node, "einsum over image tokens that is not a permutation")
        t = self.ax(operands[0])
        return TokenAxis(rhs.index(lhs[t.dim]), t.layout)

    def matmul(self, node: fx.Node):
        a, b = node.args[:2]
        ta, tb = self.ax(a), self.ax(b)
        if tb is not None:
            self.fail(node, "matmul contracts over image tokens (attention written by hand is "
                      "not recognised; use F.scaled_dot_product_attention)")
        if ta.dim == value(a).dim() - 1:
            self.fail(node, "matmul contracts over the token axis")
        return TokenAxis(value(node).dim() - value(a).dim() + ta.dim, ta.layout)

    def attention(self, node: fx.Node):
        names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal"]
        args = {k: a for k, a in zip(names, node.args)}
        args.update(node.kwargs)
        q, k, v = args["query"], args["key"], args["value"]
        tq, tk, tv = self.ax(q), self.ax(k), self.ax(v)
        if args.get("is_causal"):
            self.fail(node, "causal attention over image tokens")
        if tq is None:
            self.fail(node, "attention whose keys hold image tokens but whose queries do not")
        nd = value(q).dim()
        if tq.dim != nd - 2:
            self.fail(node, "query token axis is not the sequence axis of attention")
        mask = args.get("attn_mask")
        if _is_tensor_node(mask):
            if self.ax(mask) is not None:
                self.fail(node, "attention mask computed from image tokens")
            mv = value(mask)
            if mv.dim() >= 2 and mv.shape[-2] == tq.layout.full_length and tq.layout.full_length != 1:
                self.plan.tables.append(TableGather(node, mask, mv.dim() - 2, tq.layout))
        if tk is None and tv is None:
            self.plan.attention.append(AttentionSite(node, "cross", tq))
            return tq
        if tk is None or tv is None or tk != tv or tk.dim != value(k).dim() - 2:
            self.fail(node, "keys and values do not share one token axis")
        self.plan.attention.append(AttentionSite(node, "self", tq, tk, k, v))
        return tq


def token_layout(gm: fx.GraphModule) -> TokenPlan:
    """Find the image-token region of `gm` and plan the rewrite (see the module docstring)."""
    for n in gm.graph.nodes:
        v = value(n)
        if isinstance(v, torch.Tensor) and any(not isinstance(s, int) for s in v.shape):
            raise Unrewritable("dynamo handed over symbolic shapes (a second resolution or batch "
                               "size); compile with dynamic=False to get one static graph per shape")
    exit_node = _find_exit(gm)
    source = _hidden_states_input(gm)
    candidates = _entry_candidates(gm, source, exit_node)
    if not candidates:
        raise Unrewritable(f"no [batch, {value(exit_node).shape[1]}, channels] tensor derived from "
                           f"{source.name} before the output: no image-token region")
    errors = []
    for entry in candidates:
        try:
            return _Propagation(gm, entry, exit_node).run()
        except Unrewritable as e:
            errors.append(e)
    # the candidate that got furthest is the real entry; its error is the reason
    raise max(errors, key=lambda e: getattr(e, "progress", 0))
