"""token_layout: find the image-token region of a dynamo graph and label every token axis.

Analysis only: the graph is not changed; the returned `TokenPlan` tells the rewriting passes
what to do. Raises `Unrewritable` with a reason when anything is not provably safe (an op it
does not know, an operand dynamo recorded no shape for, tokens laid out otherwise than
[batch, tokens, channels]), and its subclass `NoImageTokens` when the graph holds no
image-token region at all (no tensor output, no `hidden_states` input). Nothing else escapes.

    exit   : walk back from the graph output through layout-only ops (unpatchify) to the
             last computed tensor  [B, N, C]; N = number of image tokens. Where that tensor
             lies on the latent grid (Kandinsky: [B, F, H, W, C]), the [B, N, C] tensor
             folded into the grid before it
    entry  : the first tensor derived from the `hidden_states` input shaped [B, N, C]
             (after patch and position embedding; for FLUX the packed input itself), or
             sequence-first [N, B, C] (ErnieImage; its exit is the [B, N, C] tensor the last
             computed [N, B, C] one is transposed into). Where neither exists and the exit
             is [B*G, S, C] (Latte: a video patched frame by frame, G frames folded into the
             batch behind B), entry and exit hold N = G*S tokens in that layout
             (plan.folded, a TokenGrid (G, S) with rows b*G + g): the blocks are followed
             on the grid, where attention within each group (a frame, or a position after
             the rearrange to [B*S, G, C]) is a MixingSite and modulation tables per row
             [B*G, 1, C] are gathered with the tokens (GridTable)
    axes   : forward propagation, op by op, of TokenAxis(dim, layout) from the entry to the
             exit; joint sequences appear where text is concatenated on the token axis
    attention: each sdpa is SELF (queries and keys hold image tokens), CROSS (queries only)
             or TO_IMAGE (keys only: another stream, e.g. LTX-2's audio, reads the image);
             a per-frame cross-attention (tokens split into T frames folded into the batch,
             [B*T, S/T, H, D], keys per frame [B*T, L, H, D]; WanAnimate's face adapter) is
             followed through FrameGroups / FrameRows: each gathered token becomes its own
             frame group and its keys are those of its frame
    mixing : an op that mixes image tokens is a MixingSite (passes/token_mixing.py), not a
             fallback: a sum over the token axis, a matmul contracting over it (Sana's
             linear attention, v [B, H, D, N] @ k [B, H, N, D]), a convolution whose kernel
             spans the token grid (Sana's Mix-FFN). Tokens unflattened into their grid are
             followed as a TokenGrid (passes/token_grid.py) through layout ops, element-wise
             ops, channel chunks and 1x1 convolutions until they are back on one axis.
             What a cache of all tokens cannot complete still fails: a cumulative sum over
             tokens, a convolution whose output is not one position per token (stride), a
             pad of the token axis

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

from . import token_grid
from .input_roles import input_roles
from .plan import (CROSS, IMAGE, SELF, TEXT, TO_IMAGE, AttentionSite, ConstantPad, FrameGroups, FrameKeys,
                   FrameRows, GridFactor, GridShape, GridTable, GroupCount, Layout, MixedOperand, MixingSite,
                   NoImageTokens, PointwiseConv, Segment, SegmentSlice, ShapeLiteral, SplitSizes,
                   SqueezeDims, TableGather, TokenAxis, TokenGrid, TokenPlan, Unrewritable)

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
    "itruediv", "exp", "sin", "cos", "tanh", "sigmoid", "sqrt", "rsqrt", "abs", "clamp", "clip",
    "gelu", "silu", "relu", "mish", "erf", "log", "square", "reciprocal", "where", "lerp",
    "dropout", "float", "half", "bfloat16", "double", "contiguous", "clone", "detach",
    "add_", "sub_", "mul_", "div_", "clamp_", "clip_", "masked_fill", "minimum", "maximum",
    "addcmul", "sign", "softplus", "leaky_relu", "elu", "hardtanh", "nan_to_num",
}
_DATA_FIRST_ONLY = {"to", "type_as", "type", "float", "half", "bfloat16", "double",
                    "contiguous", "clone", "detach", "dropout"}
_LIKE = {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "prod",
               "logsumexp", "argmax", "argmin", "all", "any", "cumsum", "var_mean"}
_NEW_OF_SIZE = {"new_zeros", "new_ones", "new_full", "new_empty"}
_PLACED_BY_INDEX = {"index_copy", "index_copy_", "index_add", "index_add_", "scatter", "scatter_",
                    "scatter_add", "scatter_add_", "index_select", "gather"}
_CONVOLUTIONS = {"conv1d", "conv2d", "conv3d"}
_ORDER_DEPENDENT = {"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"}
_LAYOUT_ONLY = {"view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten",
                "squeeze", "unsqueeze", "float", "to", "type_as", "einsum", "movedim"}


def _normal_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _arg(node: fx.Node, pos: int, name: str, default=None):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _every(spec, want: int) -> bool:
    """A conv's stride or padding `spec` (an int for every axis, a tuple, or "valid" /
    "same") is `want` on every axis."""
    if isinstance(spec, str):
        return spec == "valid" and want == 0
    return all(v == want for v in ([spec] if isinstance(spec, int) else spec))


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
def _output_path(gm: fx.GraphModule) -> list[fx.Node]:
    """The first output and the layout-only ops (unpatchify) it is computed through, back to
    the last computed tensor: [output tensor, ..., last computed tensor]."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    results = out.args[0] if out.args else None
    results = list(results) if isinstance(results, (tuple, list)) else [results]
    if not any(_is_tensor_node(r) for r in results):
        # e.g. the piece of a graph break that only mutates state, `return ()`
        raise NoImageTokens("the graph returns no tensor")
    first = results[0]
    if not _is_tensor_node(first):
        raise Unrewritable("the graph's first output is not a tensor")
    path = [first]
    while (path[-1].op in ("call_method", "call_function") and op_name(path[-1]) in _LAYOUT_ONLY
           and sum(_is_tensor_node(a) for a in path[-1].args) == 1):
        path.append(next(a for a in path[-1].args if _is_tensor_node(a)))
    return path


def _find_exit(gm: fx.GraphModule, path: list[fx.Node]) -> fx.Node:
    """The exit [B, N, C] of the output `path` (see the module docstring); a sequence-first
    one is replaced by `_batch_first_exit` once the batch is known."""
    node = path[-1]
    v = value(node)
    if v.dim() == 3:
        return node
    folded = _grid_exit(gm, node) if v.dim() > 3 else None
    if folded is None:
        on_grid = ", and no [batch, tokens, channels] tensor is folded into it" if v.dim() > 3 else ""
        if v.dim() == 2 and v.shape[0] > 1:
            on_grid = (f" (if its {v.shape[0]} rows are image tokens, they have no batch axis: "
                       "samples computed one by one, e.g. as a list)")
        raise Unrewritable(f"the last computed tensor before the output ({node.name}, shape "
                           f"{tuple(v.shape)}) is not [batch, tokens, channels]{on_grid}")
    return folded


def _batch_first_exit(path: list[fx.Node], batch):
    """The exit of a model computing sequence-first (ErnieImage):

        h   = linear(x)                        [N + T, B, C]   (text after the image)
        img = h[:N]                            [N, B, C]       <- last computed tensor
        t   = img.transpose(0, 1)              [B, N, C]       <- the exit
        out = unpatchify(t)

    That is the [B, N, C] tensor the last computed [N, B, C] tensor is transposed into on the
    way to the output (nearest first); None when the last computed tensor is not
    sequence-first or no such tensor follows it. The ops in between are token-wise on
    gathered tokens (the token analysis checks them)."""
    last = tuple(value(path[-1]).shape)
    if batch is None or len(last) != 3 or last[0] == batch or last[1] != batch:
        return None
    for node in reversed(path[:-1]):
        shape = tuple(value(node).shape)
        if shape == (batch, last[0], last[2]):
            return node
    return None


_GRID_FOLDS = {"view", "reshape", "unflatten"}


def _grid_exit(gm: fx.GraphModule, last: fx.Node):
    """The exit of a model that folds its token sequence back into the latent grid and
    computes more there (Kandinsky 5 and 6):

        h   = blocks(...)                          [B, N, C]      <- the exit
        g   = reshape(h, (B, F, H, W, C))          [B, F, H, W, C]
        out = linear(layer_norm(g) * scale + shift)  (on the grid), then unpatchify

    That is the [B, N, C] tensor folded (view, reshape, unflatten of the token axis into
    grid axes) on the way to `last`; None when none is. The ops after it run on the full
    sequence (the scattered exit), as any op after an exit does. Several folded tensors
    leave the exit open: Unrewritable."""
    needed = ancestors(last)
    folded = list(dict.fromkeys(n.args[0] for n in gm.graph.nodes if n in needed and _folds_tokens_into_grid(n)))
    if len(folded) > 1:
        raise Unrewritable(f"several [batch, tokens, channels] tensors ({', '.join(n.name for n in folded)}) are "
                           f"folded into a grid before the output ({last.name}): which one is the exit is open")
    return folded[0] if folded else None


def ancestors(node: fx.Node) -> set:
    """`node` and every node it is computed from."""
    seen, todo = {node}, [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def _folds_tokens_into_grid(node: fx.Node) -> bool:
    """`node` reshapes [B, N, C] into [B, g1, .., gk, C], g1 * .. * gk = N, with at least two
    grid axes longer than 1 (a split of heads, [B, N, 1, C], is no grid)."""
    if node.op not in ("call_method", "call_function") or op_name(node) not in _GRID_FOLDS:
        return False
    if not node.args or not _is_tensor_node(node.args[0]) or not _is_tensor_node(node):
        return False
    src, out = tuple(value(node.args[0]).shape), tuple(value(node).shape)
    if len(src) != 3 or len(out) < 4 or (out[0], out[-1]) != (src[0], src[2]):
        return False
    grid = out[1:-1]
    return math.prod(grid) == src[1] and sum(g > 1 for g in grid) >= 2


def _hidden_states_input(gm: fx.GraphModule) -> fx.Node:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    position = input_roles(gm).hidden_states
    if position is not None and _is_tensor_node(placeholders[position]):
        return placeholders[position]
    raise NoImageTokens("no `hidden_states` input found in the graph (is the whole "
                        "transformer forward captured in this graph?)")


def _derived(gm: fx.GraphModule, source: fx.Node, until: fx.Node) -> list[fx.Node]:
    """The nodes computed from `source`, in graph order, up to and including `until`."""
    derived = {source}
    out = []
    for n in gm.graph.nodes:
        if n is source or any(a in derived for a in n.all_input_nodes):
            derived.add(n)
            out.append(n)
        if n is until:
            break
    return out


def _entry_candidates(gm: fx.GraphModule, source: fx.Node, exit_node: fx.Node) -> list[tuple[fx.Node, int]]:
    """The tensors derived from `source` that may hold the N image tokens of the exit, in
    graph order, each with its token axis: [B, N, C] (axis 1) or sequence-first [N, B, C]
    (axis 0, ErnieImage's blocks)."""
    if value(source).dim() == 0:
        return []
    batch = value(source).shape[0]
    tokens = value(exit_node).shape[1]
    out = []
    for n in _derived(gm, source, exit_node):
        if n is exit_node:
            break
        v = value(n)
        if not (isinstance(v, torch.Tensor) and v.dim() == 3):
            continue
        if v.shape[0] == batch and v.shape[1] == tokens:
            out.append((n, 1))
        elif v.shape[0] == tokens and v.shape[1] == batch:
            out.append((n, 0))
    return out[:MAX_ENTRY_CANDIDATES]


# --------------------------------------------------------------------------- propagation
class _Propagation:
    """Labels token axes from `entry` forward; records literals, tables and attention."""

    def __init__(self, gm: fx.GraphModule, entry: fx.Node, exit_node: fx.Node, entry_dim: int = 1,
                 folded: TokenGrid = None):
        self.gm = gm
        n_img = folded.layout.full_length if folded is not None else value(exit_node).shape[1]
        self.plan = TokenPlan(num_image_tokens=n_img, entry=entry, exit=exit_node, entry_dim=entry_dim,
                              folded=folded)
        self.axes: dict = {}
        self.visited = 0

    # -- helpers
    def ax(self, a) -> Any:
        return self.axes.get(a) if isinstance(a, fx.Node) else None

    def fail(self, node: fx.Node, why: str):
        # progress: how far this entry candidate got
        raise Unrewritable(f"{node.name} ({op_name(node)}): {why}", progress=self.visited)

    def tensor(self, node: fx.Node, a) -> torch.Tensor:
        """The example tensor dynamo recorded for `a` (an operand of `node`, or `node` itself);
        fails when there is none: every shape rule below reads it."""
        v = value(a)
        if isinstance(v, torch.Tensor):
            return v
        what = "its result" if a is node else f"operand {getattr(a, 'name', repr(a))}"
        found = "no recorded shape" if v is None else f"a recorded {type(v).__name__}, not a tensor"
        self.fail(node, f"{what} has {found}")

    def ndim(self, node: fx.Node, a) -> int:
        return self.tensor(node, a).dim()

    def token_axis(self, node: fx.Node, a) -> TokenAxis:
        """The token axis of `a`, the tensor operand `node` reads; fails when image tokens
        reach `node` otherwise (through another argument, or as a tuple of tensors)."""
        t = self.ax(a)
        if isinstance(t, TokenAxis):
            return t
        if t is None:
            self.stray_tokens(node, "the tensor it works on")
        self.fail(node, f"{a.name}, a tuple of token-carrying tensors, is used as one tensor")

    def stray_tokens(self, node: fx.Node, expected: str):
        carriers = ", ".join(x.name for x in node.all_input_nodes if self.ax(x) is not None)
        self.fail(node, f"image tokens reach this op through {carriers}, not through {expected}")

    def run(self) -> TokenPlan:
        plan = self.plan
        started = False
        for node in self.gm.graph.nodes:
            if node is plan.entry:
                self.axes[node] = plan.folded or TokenAxis(plan.entry_dim, Layout.image(plan.num_image_tokens))
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
                if plan.folded is not None:
                    if not (isinstance(got, TokenGrid) and got.dims[:2] == plan.folded.dims[:2]
                            and not token_grid.holds_grid(got.dims[2])):
                        self.fail(node, f"the exit does not hold the image tokens as the entry does, "
                                  f"folded {plan.folded.dims[:2]} (found {got})")
                elif not (isinstance(got, TokenAxis) and got.dim == 1 and got.layout.is_image_only):
                    self.fail(node, f"the exit does not hold image tokens on axis 1 (found {got})")
                self.axes[node] = None  # downstream uses the scattered full tensor
        else:
            if not started:
                raise Unrewritable("the entry was not reached")
        if plan.exit not in self.axes:
            # progress 0: an entry inside a block whose tokens end in a sum over them (a
            # linear attention's values) reaches no exit; an earlier candidate says why
            raise Unrewritable(f"the image tokens of the entry {plan.entry.name} do not reach the exit "
                               f"{plan.exit.name}", progress=0)
        if not any(site.kind == SELF for site in plan.attention) and not plan.mixing:
            # progress 0: a later candidate that skips the blocks is no entry
            raise Unrewritable(f"no self-attention over image tokens between the entry "
                               f"{plan.entry.name} and the exit {plan.exit.name}", progress=0)
        plan.axes = {k: v for k, v in self.axes.items() if v is not None}
        plan.axes[plan.exit] = TokenAxis(1, Layout.image(plan.num_image_tokens)) if plan.folded is None else got
        return plan

    # -- dispatch
    def visit(self, node: fx.Node):
        name = op_name(node)
        if any(isinstance(self.ax(a), (FrameGroups, FrameRows)) for a in node.all_input_nodes):
            return self.in_frames(node, name)
        if any(isinstance(self.ax(a), TokenGrid) for a in node.all_input_nodes):
            return self.on_grid(node, name)
        if node.target is operator.getitem:
            return self.getitem(node)
        if node.target is operator.setitem:
            return self.setitem(node)
        if node.target is F.scaled_dot_product_attention:
            return self.attention(node)
        if not node.args and name not in ("cat", "concat", "concatenate", "stack"):
            self.fail(node, "called with keyword arguments only (the tensor it works on is "
                      "expected as the first positional argument)")
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
        if name == "view_as_complex":
            return self.view_as_complex(node)
        if name == "view_as_real":
            return self.token_axis(node, node.args[0])     # a trailing dim of 2 is added
        if name == "repeat_interleave":
            return self.repeat_interleave(node)
        if name in ("repeat", "tile"):
            return self.repeat(node, name)
        if name == "einsum":
            return self.einsum(node)
        if name in ("matmul", "bmm", "mm"):
            return self.matmul(node)
        if name in _CONVOLUTIONS:
            return self.convolution(node, name)
        if name == "pad":
            return self.pad(node)
        if name in _REDUCTIONS or name in _ORDER_DEPENDENT:
            return self.reduction(node)
        if name in _PLACED_BY_INDEX:
            return self.placed_by_index(node, name)
        if name in _LIKE:
            return self.ax(node.args[0])
        if name in _NEW_OF_SIZE:
            return None     # x.new_zeros(size): only x's dtype and device, no token values
        if name in _POINTWISE_NAMES or name in _DATA_FIRST_ONLY:
            return self.pointwise(node, name)
        self.fail(node, "this op on image tokens is not known to be token-wise")

    # -- pointwise with broadcasting; non-token operands over the full axis are tables
    def pointwise(self, node: fx.Node, name: str):
        out_ndim = self.ndim(node, node)
        operands = [node.args[0]] if name in _DATA_FIRST_ONLY else list(node.args) + list(node.kwargs.values())
        operands = [a for a in operands if isinstance(a, fx.Node)]
        aligned = None
        for a in operands:
            t = self.ax(a)
            if isinstance(t, TokenAxis):
                cand = TokenAxis(out_ndim - self.ndim(node, a) + t.dim, t.layout)
                if aligned is not None and aligned != cand:
                    self.fail(node, f"operands disagree on the token axis ({aligned} vs {cand})")
                aligned = cand
            elif t is not None:
                self.fail(node, "a tuple of tensors used as a pointwise operand")
        if aligned is None:
            if name in _DATA_FIRST_ONLY:
                # `emb.type_as(hidden_states)`: the token-carrying argument only gives the
                # dtype (or device); the result holds no image tokens
                return None
            self.stray_tokens(node, "an element-wise operand")
        for a in operands:
            # a recorded scalar broadcasts; a node with nothing recorded cannot be checked
            if self.ax(a) is None and (value(a) is None or isinstance(value(a), torch.Tensor)):
                self.table_or_broadcast(node, a, aligned, out_ndim)
        return aligned

    def table_or_broadcast(self, node: fx.Node, a: fx.Node, axis: TokenAxis, out_ndim: int):
        v = self.tensor(node, a)
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
        if any(self.ax(a) is not None for a in list(node.args[1:]) + list(node.kwargs.values())):
            self.fail(node, "weights depend on image tokens")
        t = self.token_axis(node, x)
        if t.dim == self.ndim(node, x) - 1:
            self.fail(node, "linear over the token axis")
        return t

    def norm(self, node: fx.Node):
        x = node.args[0]
        shape = _arg(node, 1, "normalized_shape")
        k = len(shape) if isinstance(shape, (tuple, list)) else 1
        if any(self.ax(a) is not None for a in list(node.args[2:]) + list(node.kwargs.values())
               if isinstance(a, fx.Node)):
            self.fail(node, "norm weights depend on image tokens")
        t = self.token_axis(node, x)
        if t.dim >= self.ndim(node, x) - k:
            self.fail(node, "normalisation over the token axis")
        return t

    def softmax(self, node: fx.Node):
        t = self.token_axis(node, node.args[0])
        d = _arg(node, 1, "dim")
        if not isinstance(d, int):
            self.fail(node, f"softmax with dim={d!r} (an explicit int is needed)")
        d = _normal_dim(d, self.ndim(node, node.args[0]))
        if d == t.dim:
            self.fail(node, "softmax over the token axis")
        return t

    def reduction(self, node: fx.Node):
        name = op_name(node)
        x = node.args[0]
        t = self.token_axis(node, x)
        ndim = self.ndim(node, x)
        dims = _arg(node, 1, "dim")
        if dims is None or isinstance(dims, fx.Node):
            self.fail(node, "reduction over image tokens (all dimensions)")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            self.fail(node, f"reduction over dims {dims!r} (ints are needed)")
        dims = [_normal_dim(d, ndim) for d in dims]
        if t.dim in dims and name in _ORDER_DEPENDENT:
            self.fail(node, f"{name} over image tokens: each output token reads the tokens before it")
        if not isinstance(value(node), torch.Tensor):
            self.fail(node, "reduction with several outputs")
        if t.dim in dims:
            # a sum over every image token (SanaVideo's linear-attention normaliser): its
            # result holds no image token and needs all of them
            return self.mix(node, [(x, t)])
        keep = _arg(node, 2, "keepdim", False)
        return TokenAxis(t.dim if keep else t.dim - sum(d < t.dim for d in dims), t.layout)

    def placed_by_index(self, node: fx.Node, name: str):
        """index_copy(buf, dim, index, x) and kin (index_add, scatter, index_select, gather)
        along a token axis: the positions come from a tensor (MiniMax-H3 writes its video
        tokens into a joint [text | audio | video] sequence at `video_indices`, an input), so
        which token sits where is data. Not followed, with that reason; along another axis,
        not followed either (not known to be token-wise)."""
        d = _arg(node, 1, "dim")
        carrier = next(a for a in node.all_input_nodes if isinstance(self.ax(a), TokenAxis))
        if not isinstance(d, int) or _normal_dim(d, self.ndim(node, carrier)) != self.ax(carrier).dim:
            self.fail(node, "this op on image tokens is not known to be token-wise")
        index = _arg(node, 2, "index")
        where = f"given by {index.name}" if isinstance(index, fx.Node) else "given by a tensor"
        self.fail(node, f"{name} along the token axis moves image tokens to or from positions {where}: "
                  "which token sits where is data, which the token analysis does not follow")

    # -- repeats of other axes (grouped-query attention: K/V heads repeated for the query heads)
    def repeat_interleave(self, node: fx.Node):
        """repeat_interleave(k, 2, dim=1)  [B, 2, N, D] -> [B, 4, N, D]: token-wise when `dim`
        is not the token axis and `repeats` an int; along the token axis (or flattened, no
        dim) it moves tokens to other positions."""
        x = node.args[0]
        t = self.token_axis(node, x)
        repeats, d = _arg(node, 1, "repeats"), _arg(node, 2, "dim")
        if isinstance(repeats, fx.Node) and self.ax(repeats) is not None:
            self.stray_tokens(node, "the tensor it repeats")
        if d is None:
            self.fail(node, "repeat_interleave without dim flattens the token axis")
        if not isinstance(d, int):
            self.fail(node, f"repeat_interleave along dim={d!r} (an int is needed)")
        if _normal_dim(d, self.ndim(node, x)) == t.dim:
            self.fail(node, "repeat_interleave along the token axis")
        if not isinstance(repeats, int):
            self.fail(node, f"repeat_interleave with repeats={getattr(repeats, 'name', repeats)!r} "
                      "(an int is needed)")
        return t

    def repeat(self, node: fx.Node, name: str):
        """x.repeat(1, 1, 2, 1) / tile: token-wise when the token axis is repeated once; extra
        leading sizes add dims in front (repeat), missing ones are 1 (tile)."""
        x = node.args[0]
        t = self.token_axis(node, x)
        ndim = self.ndim(node, x)
        if name == "tile":
            sizes = _arg(node, 1, "dims")
        elif "repeats" in node.kwargs:
            sizes = node.kwargs["repeats"]
        else:
            sizes = _shape_args(node)
        if not isinstance(sizes, (tuple, list)) or not all(isinstance(s, int) for s in sizes):
            self.fail(node, f"{name} with sizes {sizes!r} (ints are needed)")
        sizes = [1] * (ndim - len(sizes)) + list(sizes)
        dim = len(sizes) - ndim + t.dim
        if sizes[dim] != 1:
            self.fail(node, f"{name} along the token axis")
        return TokenAxis(dim, t.layout)

    # -- views
    def reshape(self, node: fx.Node):
        x = node.args[0]
        t = self.token_axis(node, x)
        dim = self.map_reshape(node, tuple(self.tensor(node, x).shape),
                               tuple(self.tensor(node, node).shape), t)
        shape = _shape_args(node)
        if len(shape) != self.ndim(node, node):
            self.fail(node, f"target shape {shape!r} is not a list of sizes")
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
        t = self.token_axis(node, node.args[0])
        out_ndim = self.ndim(node, node)
        dim = out_ndim - self.ndim(node, node.args[0]) + t.dim
        shape = _shape_args(node)
        if len(shape) != out_ndim:
            self.fail(node, f"target shape {shape!r} is not a list of sizes")
        if shape[dim] != -1:
            self.plan.literals.append(ShapeLiteral(node, dim, t.layout, use_minus_one=True))
        return TokenAxis(dim, t.layout)

    def flatten(self, node: fx.Node):
        x = node.args[0]
        t = self.token_axis(node, x)
        shape = self.tensor(node, x).shape
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

    def view_as_complex(self, node: fx.Node):
        """[.., N, .., D, 2] real -> [.., N, .., D] complex (complex RoPE): the trailing pair
        becomes one complex number, every other axis is kept."""
        x = node.args[0]
        t = self.token_axis(node, x)
        shape = self.tensor(node, x).shape
        if t.dim == len(shape) - 1:
            self.fail(node, "view_as_complex of the token axis (its last dim)")
        return t

    def unflatten(self, node: fx.Node):
        t = self.token_axis(node, node.args[0])
        d = _normal_dim(_arg(node, 1, "dim"), self.ndim(node, node.args[0]))
        sizes = _arg(node, 2, "sizes")
        if d == t.dim and len(sizes) > 2 and t.layout.is_image_only:
            return self.split_into_grid(node, t, len(sizes))
        if d == t.dim:
            return self.split_into_frames(node, t, sizes)
        return TokenAxis(t.dim + (len(sizes) - 1 if d < t.dim else 0), t.layout)

    # -- per-frame cross-attention (WanAnimate's face adapter): frames folded into the batch
    def split_into_frames(self, node: fx.Node, t: TokenAxis, sizes) -> FrameGroups:
        """q.unflatten(1, (T, -1))  [B, S, H, D] -> [B, T, S/T, H, D]: image tokens in T frames
        of S/T consecutive tokens. Followed to a per-frame cross-attention (`frame_attention`);
        the sizes become (n, 1): each gathered token is its own frame group."""
        if len(sizes) != 2 or not t.layout.is_image_only:
            self.fail(node, f"unflatten splits the token axis into {tuple(sizes)}, which the token "
                      "analysis follows only as image tokens in frames (two sizes, no text)")
        frames = self.tensor(node, node).shape[t.dim]
        self.plan.literals.append(GroupCount(node, 0, t.layout))
        return FrameGroups(t.dim, t.layout, frames)

    def split_into_grid(self, node: fx.Node, t: TokenAxis, k: int):
        """x.unflatten(1, (F, H, W))  [B, N, C] -> [B, F, H, W, C]: the image tokens on their
        latent grid (SanaVideo's Mix-FFN); rewritten (n, 1, 1)."""
        out_shape = tuple(self.tensor(node, node).shape)
        sizes = out_shape[t.dim:t.dim + k]
        g = token_grid.grid_of(sizes, out_shape, {t.dim + i: i for i in range(k)}, t.layout)
        self.grid_literal(node, t.dim, g.dims[t.dim:t.dim + k])
        return token_grid.as_token_axis(g)

    def in_frames(self, node: fx.Node, name: str):
        """Ops on image tokens split into frames: layout changes that keep the frame rows
        whole, the attention, and the fold back to [B, S, ...]; anything else is followed as
        an op on the token grid (frames x tokens of a frame; `on_grid`)."""
        if node.target is F.scaled_dot_product_attention:
            return self.frame_attention(node)
        x = node.args[0] if node.args else None
        s = self.ax(x)
        others = [a for a in node.all_input_nodes if a is not x and self.ax(a) is not None]
        if s is None or (others and name not in _DATA_FIRST_ONLY):
            return self.on_grid(node, name)
        if name in _DATA_FIRST_ONLY or name == "contiguous":
            return s
        if name == "flatten":
            return self.flatten_frames(node, s)
        if name == "unflatten" and isinstance(s, FrameRows):
            return self.unfold_frames(node, s)
        if name in ("transpose", "swapaxes", "permute", "movedim") and isinstance(s, FrameRows):
            order = self.permutation(node, name)
            if order[0] != 0:
                self.fail(node, f"{name} moves the frame rows off axis 0")
            return FrameRows(order.index(s.dim), s.layout, s.frames, s.batch)
        return self.on_grid(node, name)

    def flatten_frames(self, node: fx.Node, s):
        """[B, T, S/T, ..] flatten(0, 1) -> [B*T, S/T, ..] (frames into the batch); [B, T, S/T, C]
        flatten(1, 2) -> [B, S, C] (frames back into tokens); [B*T, S/T, H, D] flatten(2, 3)
        merges axes that are not the frames'."""
        ndim = self.ndim(node, node.args[0])
        start = _normal_dim(_arg(node, 1, "start_dim", 0), ndim)
        end = _normal_dim(_arg(node, 2, "end_dim", -1), ndim)
        if isinstance(s, FrameGroups) and (start, end) == (0, 1) and s.dim == 1:
            batch = self.tensor(node, node.args[0]).shape[0]
            return FrameRows(1, s.layout, s.frames, batch)
        if isinstance(s, FrameGroups) and (start, end) == (s.dim, s.dim + 1):
            return TokenAxis(s.dim, s.layout)
        if isinstance(s, FrameRows) and start > s.dim:
            return s
        if isinstance(s, FrameRows) and end < s.dim and start > 0:
            return FrameRows(s.dim - (end - start), s.layout, s.frames, s.batch)
        self.fail(node, f"flatten({start}, {end}) of image tokens split into {s.frames} frames merges "
                  "a frame axis with another")

    def unfold_frames(self, node: fx.Node, s: FrameRows) -> FrameGroups:
        """[B*T, S/T, C] unflatten(0, (B, T)) -> [B, T, S/T, C]: sizes (B, n) once rewritten."""
        d = _normal_dim(_arg(node, 1, "dim"), self.ndim(node, node.args[0]))
        shape = tuple(self.tensor(node, node).shape)
        if d != 0 or s.dim != 1 or shape[:2] != (s.batch, s.frames):
            self.fail(node, f"unflatten of frame rows into {shape[:2]} is not (batch {s.batch}, "
                      f"frames {s.frames}) in front of the tokens of a frame")
        self.plan.literals.append(GroupCount(node, 1, s.layout))
        return FrameGroups(1, s.layout, s.frames)

    def frame_attention(self, node: fx.Node) -> FrameRows:
        """sdpa(q [B*T, H, S/T, D], k, v [B*T, H, L, D]): each frame's queries attend to that
        frame's keys, which hold no image token (WanAnimate: face features per frame). Exact
        for any subset: every query row reads only its own frame's keys, so those are gathered
        per query token by its frame (`FrameKeys`): q [B*n, H, 1, D], k, v [B*n, H, L, D]."""
        args = _attention_args(node)
        q, k, v, mask = args["query"], args["key"], args["value"], args.get("attn_mask")
        rows = self.ax(q)
        if not isinstance(rows, FrameRows):
            self.fail(node, "keys or values hold image tokens split into frames, the queries do not")
        if self.ax(k) is not None or self.ax(v) is not None:
            self.fail(node, "attention within frames whose keys hold image tokens: a gathered token "
                      "reads the keys of its whole frame, and no per-layer cache completes frames")
        if args.get("is_causal") or isinstance(mask, fx.Node):
            self.fail(node, "attention within frames with a mask or causal")
        if rows.dim != self.ndim(node, q) - 2:
            self.fail(node, "the tokens of a frame are not the sequence axis of attention")
        group_size = rows.layout.full_length // rows.frames
        for kv in dict.fromkeys((k, v)):
            if self.tensor(node, kv).shape[0] != rows.batch * rows.frames:
                self.fail(node, f"keys {kv.name} have no row per frame ({rows.batch} x {rows.frames})")
            self.plan.frame_keys.append(FrameKeys(node, kv, rows.layout, rows.frames, rows.batch,
                                                  group_size))
        return rows

    # -- image tokens on their grid (Sana's Mix-FFN: [B, N, C] -> [B, C, H, W] -> convs -> back)
    def grid(self, node: fx.Node, a) -> TokenGrid:
        """The TokenGrid of operand `a` of `node`: frames (FrameGroups, FrameRows) and a token
        axis are grids too (frames x tokens of a frame; one axis of N tokens)."""
        t = self.ax(a)
        shape = tuple(self.tensor(node, a).shape)
        if isinstance(t, TokenGrid):
            return t
        if isinstance(t, TokenAxis):
            if not t.layout.is_image_only:
                self.fail(node, f"image tokens joint with text ({t.layout}) meet the token grid")
            return token_grid.of_token_axis(t, shape)
        if isinstance(t, (FrameGroups, FrameRows)):
            size = t.layout.full_length // t.frames
            if t.frames == 1 or size == 1:
                self.fail(node, f"image tokens in {t.frames} frames of {size} tokens are no grid")
            if isinstance(t, FrameGroups):
                return token_grid.grid_of((t.frames, size), shape, {t.dim: 0, t.dim + 1: 1}, t.layout)
            rows = token_grid.grid_of((t.frames, size), shape, {t.dim: 1}, t.layout)
            batch = (GridFactor(None, t.batch),) if t.batch > 1 else ()
            return TokenGrid(rows.sizes, (batch + (GridFactor(0, t.frames),),) + rows.dims[1:], t.layout)
        self.stray_tokens(node, "one tensor on the token grid")

    def on_grid(self, node: fx.Node, name: str):
        """Ops on image tokens laid out on their grid (`TokenGrid`): layout changes regroup or
        reorder its factors; element-wise ops, channel chunks and 1x1 convolutions are
        token-wise; a convolution with a kernel over the grid mixes tokens
        (`convolution`). Where the tokens are back in sequence order on one axis, the result
        is a TokenAxis again."""
        if node.target is operator.getitem:
            self.fail(node, "indexing of image tokens laid out on their grid")
        if not node.args:
            self.fail(node, "called with keyword arguments only")
        x = node.args[0]
        if node.target is F.scaled_dot_product_attention:
            return self.grid_attention(node)
        if name in _CONVOLUTIONS:
            return self.convolution(node, name)
        if name in ("linear", "layer_norm", "rms_norm"):
            return self.grid_channels(node, name)
        if name in _DATA_FIRST_ONLY:
            # `out.type_as(query)`: the other argument gives the dtype only
            return None if self.ax(x) is None else self.grid(node, x)
        if name in _POINTWISE_NAMES:
            return self.grid_pointwise(node)
        g = self.grid(node, x)
        out_shape = tuple(self.tensor(node, node).shape) if _is_tensor_node(node) else None
        if name in ("transpose", "swapaxes", "permute", "movedim"):
            return token_grid.permuted(g, self.permutation(node, name))
        if name in ("view", "reshape", "flatten", "unflatten"):
            return self.grid_reshape(node, name, g, out_shape)
        if name in ("chunk", "split"):
            return self.grid_chunk(node, name, g)
        if name == "pad":
            return self.pad(node)
        self.fail(node, "this op on image tokens laid out on their grid is not known to be token-wise")

    def grid_pointwise(self, node: fx.Node):
        out = self.tensor(node, node)
        operands = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
        grids = {self.grid(node, a) for a in operands if self.ax(a) is not None}
        if len(grids) != 1 or any(self.ndim(node, a) != out.dim() for a in operands if self.ax(a) is not None):
            self.fail(node, "operands hold image tokens laid out differently on the token grid")
        g = grids.pop()
        resized = token_grid.resized(g, tuple(out.shape))
        if resized is None:
            self.fail(node, "broadcasting changes the token grid")
        for a in operands:
            if self.ax(a) is None and isinstance(value(a), torch.Tensor):
                self.grid_table(node, a, resized, tuple(out.shape))
        return resized

    def grid_table(self, node: fx.Node, a: fx.Node, g: TokenGrid, out_shape) -> None:
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
                self.fail(node, f"operand {a.name} varies along axis {d}, which holds the token grid, "
                          f"with {v.shape[d - lead]} of its {out_shape[d]} positions")
        sizes = [out_shape[d] if d in token_grid.grid_dims(g) else (v.shape[d - lead] if d >= lead else 1)
                 for d in range(len(out_shape))]
        table = token_grid.resized(g, tuple(sizes))
        if table is None:
            self.fail(node, f"operand {a.name} cannot be laid out on the token grid")
        self.plan.grid_tables.append(GridTable(node, a, table))

    def grid_channels(self, node: fx.Node, name: str):
        """linear, layer_norm, rms_norm over trailing axes that hold no grid factor: token-wise."""
        x = node.args[0]
        if any(self.ax(a) is not None for a in node.all_input_nodes if a is not x):
            self.fail(node, "weights depend on image tokens")
        g = self.grid(node, x)
        shape = _arg(node, 1, "normalized_shape") if name != "linear" else None
        k = 1 if name == "linear" else (len(shape) if isinstance(shape, (tuple, list)) else 1)
        ndim = self.ndim(node, x)
        if any(d >= ndim - k for d in token_grid.grid_dims(g)):
            self.fail(node, f"{name} over an axis that holds the token grid")
        out = token_grid.resized(g, tuple(self.tensor(node, node).shape))
        if out is None:
            self.fail(node, f"{name} changes the token grid")
        return out

    def grid_attention(self, node: fx.Node):
        """sdpa on image tokens laid out on their grid with groups folded into the batch axis
        (Latte: attention within each frame, q, k, v [B*F, H, S, D]; across the frames at each
        position, [B*S, H, F, D]; per-frame cross-attention to text, k, v [B*F, H, L, D]).
        A gathered token reads the keys of its whole group: the attention runs on its
        operands completed to every token (a MixingSite; the query's rows of tokens not
        computed are discarded) and the active rows of its result are gathered back."""
        args = _attention_args(node)
        q, k, v, mask = args["query"], args["key"], args["value"], args.get("attn_mask")
        if args.get("is_causal") or isinstance(mask, fx.Node):
            self.fail(node, "attention on the token grid with a mask or causal")
        operands = [(a, self.grid(node, a)) for a in dict.fromkeys((q, k, v)) if self.ax(a) is not None]
        for a, g in operands:
            if self.ndim(node, a) - 1 in token_grid.grid_dims(g):
                self.fail(node, f"{a.name} holds the token grid on its feature axis")
        if self.ax(q) is None:
            return self.mix(node, operands)
        out = token_grid.resized(self.grid(node, q), tuple(self.tensor(node, node).shape))
        if out is None:
            self.fail(node, "attention changes the token grid of its queries")
        return self.mix(node, operands, out)

    def grid_reshape(self, node: fx.Node, name: str, g: TokenGrid, out_shape):
        new = token_grid.regroup(g, out_shape)
        if new is None:
            in_shape = tuple(self.tensor(node, node.args[0]).shape)
            self.fail(node, f"{name} {in_shape} -> {out_shape} cuts an axis of the token grid {g.sizes}")
        if name in ("view", "reshape"):
            self.grid_literal(node, 0, new.dims)
        elif name == "unflatten":
            d = _normal_dim(_arg(node, 1, "dim"), len(out_shape) - len(_arg(node, 2, "sizes")) + 1)
            self.grid_literal(node, d, new.dims[d:d + len(_arg(node, 2, "sizes"))])
        return token_grid.as_token_axis(new)

    def grid_literal(self, node: fx.Node, first: int, dims) -> None:
        """Record the sizes of the axes holding grid factors (see plan.GridShape)."""
        sizes = tuple((math.prod(f.size for f in fs if f.axis is None), any(f.axis == 0 for f in fs))
                      if token_grid.holds_grid(fs) else None for fs in dims)
        self.plan.literals.append(GridShape(node, first, sizes))

    def grid_chunk(self, node: fx.Node, name: str, g: TokenGrid):
        """chunk / split along an axis that holds no grid factor (GLU gates on channels)."""
        ndim = self.ndim(node, node.args[0])
        d = _arg(node, 2, "dim", 0)
        if not isinstance(d, int) or _normal_dim(d, ndim) in token_grid.grid_dims(g):
            self.fail(node, f"{name} along dim={d!r}, which holds the token grid")
        outs = value(node)
        if not isinstance(outs, (tuple, list)):
            self.fail(node, "its result has no recorded tuple of tensors")
        return tuple(token_grid.resized(g, tuple(o.shape)) for o in outs)

    def pad(self, node: fx.Node):
        """F.pad(x, (l_last, r_last, l_prev, r_prev, ..)): token-wise when it pads no axis that
        holds image tokens (Sana's value padded by a ones channel); padding the token axis
        adds positions that are no token."""
        x = node.args[0]
        pads, mode = _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant")
        if not isinstance(pads, (tuple, list)) or not all(isinstance(p, int) and p >= 0 for p in pads):
            self.fail(node, f"pad with {pads!r} (ints >= 0 are needed)")
        if mode != "constant":
            self.fail(node, f"pad in mode {mode!r} of a tensor holding image tokens (constant pads only)")
        self.plan.literals.append(ConstantPad(node))
        ndim = self.ndim(node, x)
        padded = {ndim - 1 - k for k in range(len(pads) // 2) if (pads[2 * k], pads[2 * k + 1]) != (0, 0)}
        t = self.ax(x)
        if isinstance(t, TokenAxis):
            if t.dim in padded:
                self.fail(node, "pad of the token axis")
            return t
        g = self.grid(node, x)
        if padded & set(token_grid.grid_dims(g)):
            self.fail(node, "pad of an axis that holds the token grid")
        return token_grid.resized(g, tuple(self.tensor(node, node).shape))

    def convolution(self, node: fx.Node, name: str):
        """conv{1,2,3}d(x [B, C, *spatial], w, b, stride, padding, dilation, groups) on image
        tokens on their grid (or on a token axis among the spatial axes). The batch axis may
        hold grid factors (frames folded into it); the channel axis may not. A spatial axis
        holding the grid must keep its size (stride 1, `same` padding): with a 1-wide kernel
        there the op is token-wise, with a wider one it mixes neighbouring tokens and runs
        on the whole grid (a MixingSite)."""
        x, w = node.args[0], _arg(node, 1, "weight")
        if any(self.ax(a) is not None for a in node.all_input_nodes if a is not x):
            self.fail(node, "convolution weights depend on image tokens")
        g = self.grid(node, x)
        in_shape, out_shape = tuple(self.tensor(node, x).shape), tuple(self.tensor(node, node).shape)
        if 1 in token_grid.grid_dims(g):
            self.fail(node, "convolution over channels that hold image tokens")
        kernel = tuple(self.tensor(node, w).shape[2:])
        stride, padding = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0)
        for d in token_grid.grid_dims(g):
            if d > 0 and out_shape[d] != in_shape[d]:
                self.fail(node, f"{name} with stride {stride} and padding {padding!r} gives {out_shape[d]} "
                          f"positions on axis {d} for the {in_shape[d]} of the token grid: its output is not "
                          "one per token")
        out = token_grid.resized(g, out_shape)
        if not any(d > 1 for d in token_grid.grid_dims(g)):
            return token_grid.as_token_axis(out)       # tokens on the batch axis only
        pointwise = (all(k == 1 for k in kernel) and _arg(node, 6, "groups", 1) == 1
                     and _every(stride, 1) and _every(padding, 0))
        if pointwise:
            self.plan.literals.append(PointwiseConv(node))
            return token_grid.as_token_axis(out)
        return self.mix(node, [(x, g)], out)

    def mix(self, node: fx.Node, operands, output=None):
        """Record a token-mixing op (plan.MixingSite): its token-holding operands are
        completed from caches of every image token; its result holds no image token
        (`output` None: a sum over them) or holds them on `output` (a convolution's grid)."""
        if any(isinstance(t, TokenAxis) and not t.layout.is_image_only for _, t in operands) and output is not None:
            self.fail(node, "a token-mixing op over a joint sequence whose result holds its tokens")
        self.plan.mixing.append(MixingSite(node, tuple(MixedOperand(a, t) for a, t in operands), output))
        return None if output is None else token_grid.as_token_axis(output)

    def permute(self, node: fx.Node, name: str):
        t = self.token_axis(node, node.args[0])
        return TokenAxis(self.permutation(node, name).index(t.dim), t.layout)

    def permutation(self, node: fx.Node, name: str) -> list[int]:
        """The axis order of `node` (transpose, swapaxes, permute, movedim): output axis i is
        input axis order[i]."""
        ndim = self.ndim(node, node.args[0])
        if name in ("transpose", "swapaxes"):
            dims = [_arg(node, 1, "dim0"), _arg(node, 2, "dim1")]
        elif name == "permute":
            dims = node.kwargs.get("dims", node.args[1:])
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = dims[0]
        else:  # movedim(source, destination)
            dims = [_arg(node, 1, "source"), _arg(node, 2, "destination")]
        if not all(isinstance(d, int) for d in dims):
            self.fail(node, f"{name} with dims {list(dims)!r} (ints are needed)")
        dims = [_normal_dim(d, ndim) for d in dims]
        if name in ("transpose", "swapaxes"):
            order = list(range(ndim))
            order[dims[0]], order[dims[1]] = order[dims[1]], order[dims[0]]
        elif name == "permute":
            order = dims
        else:
            order = [d for d in range(ndim) if d != dims[0]]
            order.insert(dims[1], dims[0])
        if sorted(order) != list(range(ndim)):
            self.fail(node, f"{name} with dims {order} is not a permutation of {ndim} dims")
        return order

    def unsqueeze(self, node: fx.Node):
        t = self.token_axis(node, node.args[0])
        d = _normal_dim(_arg(node, 1, "dim"), self.ndim(node, node))
        return TokenAxis(t.dim + (1 if d <= t.dim else 0), t.layout)

    def squeeze(self, node: fx.Node):
        x = node.args[0]
        t = self.token_axis(node, x)
        shape = self.tensor(node, x).shape
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
            if not isinstance(index, int) or not -len(t) <= index < len(t):
                self.fail(node, f"index {index!r} into a tuple of {len(t)} token-carrying outputs")
            return t[index]
        t = self.token_axis(node, src)
        return self.index_axis(node, src, index, t, record=True)

    def index_axis(self, node: fx.Node, src: fx.Node, index, t: TokenAxis, record: bool):
        """Token axis of `src[index]` (basic indexing only)."""
        if isinstance(index, fx.Node) or (isinstance(index, (tuple, list))
                                          and any(isinstance(i, fx.Node) for i in index)):
            self.fail(node, "tensor indexing of a token-carrying tensor")
        items = list(index) if isinstance(index, tuple) else [index]
        ndim = self.ndim(node, src)
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
        if not all(b is None or isinstance(b, int) for b in (sl.start, sl.stop)):
            self.fail(node, f"slice {sl.start!r}:{sl.stop!r} of the token axis has a computed "
                      "bound")
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
        if not isinstance(dim, int):
            self.fail(node, f"cat along dim={dim!r} (an int is needed)")
        ndim = self.ndim(node, node)
        dim = _normal_dim(dim, ndim)
        axes = [self.ax(a) for a in tensors]
        tok = [a for a in axes if a is not None]
        if not tok:
            self.stray_tokens(node, "the tensors it concatenates")
        if any(not isinstance(a, TokenAxis) for a in tok):
            self.fail(node, "cat of tuples")
        if all(a.dim != dim for a in tok):
            first = tok[0]
            if any(a != first for a in tok):
                self.fail(node, "cat of tensors with different token axes")
            for a, x in zip(axes, tensors):
                if a is None:
                    if self.tensor(node, x).shape[first.dim] != first.layout.full_length:
                        self.fail(node, f"{x.name} has no token axis to match")
                    self.plan.tables.append(TableGather(node, x, first.dim, first.layout))
            return first
        if any(a.dim != dim for a in tok) or len(tok) > 1:
            self.fail(node, "cat of several image streams on the token axis")
        segments: list[Segment] = []
        for a, x in zip(axes, tensors):
            if a is None:
                segments.append(Segment(TEXT, self.tensor(node, x).shape[dim]))
            else:
                segments.extend(a.layout.segments)
        return TokenAxis(dim, Layout(tuple(segments)))

    def stack(self, node: fx.Node):
        tensors = list(_arg(node, 0, "tensors"))
        dim = _normal_dim(_arg(node, 1, "dim", 0), self.ndim(node, node))
        axes = [self.ax(a) for a in tensors]
        first = next((a for a in axes if a is not None), None)
        if first is None:
            self.stray_tokens(node, "the tensors it stacks")
        if not isinstance(first, TokenAxis):
            self.fail(node, "stack of tuples")
        if any(a != first for a in axes):
            self.fail(node, "stack of tensors with different token axes")
        return TokenAxis(first.dim + (1 if dim <= first.dim else 0), first.layout)

    def split(self, node: fx.Node, name: str):
        x = node.args[0]
        t = self.token_axis(node, x)
        ndim = self.ndim(node, x)
        dim_pos = 1 if name == "unbind" else 2
        d = _arg(node, dim_pos, "dim", 0)
        if not isinstance(d, int):
            self.fail(node, f"{name} along dim={d!r} (an int is needed)")
        d = _normal_dim(d, ndim)
        outs = value(node)
        if not isinstance(outs, (tuple, list)):
            self.fail(node, "its result has no recorded tuple of tensors")
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
        if not isinstance(eq, str):
            self.fail(node, "einsum in the sublist form (an equation string is needed)")
        operands = [a for a in node.args[1:]]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        lhs, _, rhs = eq.replace(" ", "").partition("->")
        if len(operands) != 1 or "," in lhs or sorted(lhs) != sorted(rhs) or "." in lhs:
            self.fail(node, "einsum over image tokens that is not a permutation")
        t = self.token_axis(node, operands[0])
        return TokenAxis(rhs.index(lhs[t.dim]), t.layout)

    def matmul(self, node: fx.Node):
        """a @ b over the last axis of a and the second last of b:

            token-wise   a [.., N, K] @ W [K, M]      tokens of a on another axis
                         S [.., M, K] @ q [.., K, N]  tokens of b on its last axis
            mixing       v [.., D, N] @ k [.., N, D]  contracts over the image tokens (Sana's
                                                      linear attention): a token-mixing op
            otherwise (q @ k^T: tokens on both sides, none contracted) not followed."""
        a, b = node.args[:2]
        ta, tb = self.ax(a), self.ax(b)
        nda, ndb = self.ndim(node, a), self.ndim(node, b)
        if nda < 2 or ndb < 2:
            self.fail(node, "matmul of a vector holding image tokens")
        contracted = [(x, t) for x, t, d in ((a, ta, nda - 1), (b, tb, ndb - 2))
                      if isinstance(t, TokenAxis) and t.dim == d]
        if contracted and len(contracted) == sum(t is not None for t in (ta, tb)):
            return self.mix(node, contracted)
        if ta is not None and tb is not None:
            self.fail(node, "matmul contracts over image tokens (attention written by hand is "
                      "not recognised; use F.scaled_dot_product_attention)")
        if tb is not None:
            tb = self.token_axis(node, b)
            if tb.dim != ndb - 1:
                self.fail(node, "matmul with image tokens on a batch axis of its second operand")
            return TokenAxis(self.ndim(node, node) - 1, tb.layout)
        ta = self.token_axis(node, a)
        if ta.dim == nda - 1:
            self.fail(node, "matmul contracts over the token axis")
        return TokenAxis(self.ndim(node, node) - nda + ta.dim, ta.layout)

    def attention(self, node: fx.Node):
        """scaled_dot_product_attention, classified by what its queries and keys hold (see
        plan.AttentionSite): SELF and CROSS return the query's token axis; TO_IMAGE (queries
        without image tokens attending to image keys) returns None: the softmax runs over
        the completed keys, so every output row is computed in full."""
        args = _attention_args(node)
        q, k, v, mask = args["query"], args["key"], args["value"], args.get("attn_mask")
        if args.get("is_causal"):
            self.fail(node, "causal attention over image tokens")
        if isinstance(mask, fx.Node) and self.ax(mask) is not None:
            self.fail(node, "attention mask computed from image tokens")
        key = self.key_axis(node, k, v)
        if self.ax(q) is None:
            if key is None:
                self.stray_tokens(node, "its query, key or value")
            self.plan.attention.append(AttentionSite(node, TO_IMAGE, None, key, k, v))
            return None
        query = self.token_axis(node, q)
        if query.dim != self.ndim(node, q) - 2:
            self.fail(node, "query token axis is not the sequence axis of attention")
        self.gather_mask_rows(node, mask, query)
        self.plan.attention.append(AttentionSite(node, CROSS if key is None else SELF, query, key, k, v))
        return query

    def key_axis(self, node: fx.Node, k, v):
        """The token axis keys and values share (k, v [B, H, S, D] with image tokens on S), or
        None when neither holds image tokens. Image tokens elsewhere (on a batch or feature
        axis of attention, or in only one of the two) fail: no per-layer cache of rows along
        S would complete them."""
        tk, tv = self.ax(k), self.ax(v)
        if tk is None and tv is None:
            return None
        if not isinstance(tk, TokenAxis) or tk != tv:
            self.fail(node, "keys and values do not share one token axis")
        if tk.dim != self.ndim(node, k) - 2:
            self.fail(node, f"keys hold image tokens on axis {tk.dim}, not on the sequence axis of "
                      "attention")
        return tk

    def gather_mask_rows(self, node: fx.Node, mask, query: TokenAxis):
        """A mask [.., L, S] whose rows run over the queries' tokens is gathered with them;
        its key axis stays at full length (the keys are completed)."""
        if not isinstance(mask, fx.Node):
            return
        mv = self.tensor(node, mask)
        full = query.layout.full_length
        if mv.dim() >= 2 and mv.shape[-2] == full and full != 1:
            self.plan.tables.append(TableGather(node, mask, mv.dim() - 2, query.layout))


def _attention_args(node: fx.Node) -> dict:
    """The arguments of a scaled_dot_product_attention call by name, whichever call form."""
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args


def _folded_layout(gm: fx.GraphModule, source: fx.Node, exit_node: fx.Node):
    """The TokenGrid of an exit [B*G, S, C] whose batch axis holds G groups of S image tokens
    behind the batch B of `source` (Latte's frames: rows b*G + g, token g*S + s), or None.
    The entry is then a tensor of the same shape derived from `source`."""
    if value(source).dim() == 0 or exit_node not in _derived(gm, source, exit_node):
        return None
    batch = value(source).shape[0]
    rows, size, channels = tuple(value(exit_node).shape)
    if rows == batch or rows % batch or size < 2:
        return None
    groups = rows // batch
    layout = Layout.image(groups * size)
    outer = ((GridFactor(None, batch),) if batch > 1 else ()) + (GridFactor(0, groups),)
    return TokenGrid((groups, size), (outer, (GridFactor(1, size),),
                                      (GridFactor(None, channels),) if channels > 1 else ()), layout)


def _folded_candidates(gm: fx.GraphModule, source: fx.Node, exit_node: fx.Node) -> list[fx.Node]:
    """The tensors derived from `source` shaped like the folded exit, in graph order."""
    shape = tuple(value(exit_node).shape[:2])
    out = []
    for n in _derived(gm, source, exit_node):
        if n is exit_node:
            break
        v = value(n)
        if isinstance(v, torch.Tensor) and v.dim() == 3 and tuple(v.shape[:2]) == shape:
            out.append(n)
    return out[:MAX_ENTRY_CANDIDATES]


def _no_entry(gm: fx.GraphModule, source: fx.Node, exit_node: fx.Node):
    """Raise why no entry candidate exists. The exit [d0, d1, C] was read as
    [batch, tokens, channels]; when it is computed from `source` but d0 is not its batch, the
    graph holds image tokens in a layout the analysis does not follow."""
    batch = value(source).shape[0] if value(source).dim() else None
    if exit_node not in _derived(gm, source, exit_node):
        batch = None
    shape = tuple(value(exit_node).shape)
    found = f"the last computed tensor before the output ({exit_node.name}, shape {shape})"
    if batch is not None and shape[0] != batch and shape[1] == batch:
        raise Unrewritable(f"{found} is sequence-first [tokens, batch, channels] (batch {batch} "
                           f"of {source.name}); the token analysis follows [batch, tokens, "
                           "channels] only")
    if batch is not None and shape[0] != batch and shape[0] % batch == 0:
        raise Unrewritable(f"{found} has {shape[0]} rows on its batch axis for batch {batch} of "
                           f"{source.name}: {shape[0] // batch} groups of tokens (e.g. frames) are "
                           "folded into the batch axis, which the token analysis does not follow")
    raise NoImageTokens(f"no [batch, {shape[1]}, channels] tensor derived from {source.name} "
                        "before the output: no image-token region")


def token_layout(gm: fx.GraphModule) -> TokenPlan:
    """Find the image-token region of `gm` and plan the rewrite (see the module docstring)."""
    for n in gm.graph.nodes:
        v = value(n)
        if isinstance(v, torch.Tensor) and any(not isinstance(s, int) for s in v.shape):
            raise Unrewritable("dynamo handed over symbolic shapes (a second resolution or batch "
                               "size); compile with dynamic=False to get one static graph per shape")
    path = _output_path(gm)
    exit_node = _find_exit(gm, path)
    source = _hidden_states_input(gm)
    batch = value(source).shape[0] if value(source).dim() else None
    exit_node = _batch_first_exit(path, batch) or exit_node
    candidates = [(entry, entry_dim, None) for entry, entry_dim in _entry_candidates(gm, source, exit_node)]
    folded = None if candidates else _folded_layout(gm, source, exit_node)
    if folded is not None:
        candidates = [(entry, 1, folded) for entry in _folded_candidates(gm, source, exit_node)]
    if not candidates:
        _no_entry(gm, source, exit_node)
    errors = []
    for entry, entry_dim, grid in candidates:
        try:
            return _Propagation(gm, entry, exit_node, entry_dim, grid).run()
        except Unrewritable as e:
            errors.append(e)
    # the candidate that got furthest is the real entry; its error is the reason
    raise max(errors, key=lambda e: e.progress)
