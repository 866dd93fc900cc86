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
             exit (passes/token_propagation.py), each op read by its token rule
             (passes/token_rules/, keyed by op); joint sequences appear where text is
             concatenated on the token axis
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

import torch
import torch.fx as fx

from .input_roles import argument_name, hidden_states_input
from .nodes import ancestors, is_tensor_node, op_name, placeholders, value
from .plan import GridFactor, Layout, NoImageTokens, TokenGrid, TokenPlan, Unrewritable
from .token_propagation import Propagation

MAX_ENTRY_CANDIDATES = 6

# layout-only ops between the last computed tensor and the output (unpatchify)
_LAYOUT_ONLY = {"view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten",
                "squeeze", "unsqueeze", "float", "to", "type_as", "einsum", "movedim"}


# --------------------------------------------------------------------------- exit / entry
def _output_path(gm: fx.GraphModule) -> list[fx.Node]:
    """The first output and the layout-only ops (unpatchify) it is computed through, back to
    the last computed tensor: [output tensor, ..., last computed tensor]."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    results = out.args[0] if out.args else None
    results = list(results) if isinstance(results, (tuple, list)) else [results]
    if not any(is_tensor_node(r) for r in results):
        # e.g. the piece of a graph break that only mutates state, `return ()`
        raise NoImageTokens("the graph returns no tensor")
    first = results[0]
    if not is_tensor_node(first):
        raise Unrewritable("the graph's first output is not a tensor")
    path = [first]
    while (path[-1].op in ("call_method", "call_function") and op_name(path[-1]) in _LAYOUT_ONLY
           and sum(is_tensor_node(a) for a in path[-1].args) == 1):
        path.append(next(a for a in path[-1].args if is_tensor_node(a)))
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


def _folds_tokens_into_grid(node: fx.Node) -> bool:
    """`node` reshapes [B, N, C] into [B, g1, .., gk, C], g1 * .. * gk = N, with at least two
    grid axes longer than 1 (a split of heads, [B, N, 1, C], is no grid)."""
    if node.op not in ("call_method", "call_function") or op_name(node) not in _GRID_FOLDS:
        return False
    if not node.args or not is_tensor_node(node.args[0]) or not is_tensor_node(node):
        return False
    src, out = tuple(value(node.args[0]).shape), tuple(value(node).shape)
    if len(src) != 3 or len(out) < 4 or (out[0], out[-1]) != (src[0], src[2]):
        return False
    grid = out[1:-1]
    return math.prod(grid) == src[1] and sum(g > 1 for g in grid) >= 2


def _hidden_states_input(gm: fx.GraphModule) -> fx.Node:
    latent = hidden_states_input(gm)
    if latent is not None and is_tensor_node(latent):
        return latent
    inputs = sorted({name for name in map(argument_name, placeholders(gm.graph)) if name})
    raise NoImageTokens(f"no `hidden_states` input found in the graph (its inputs: {', '.join(inputs) or 'none'}; "
                        "is the whole transformer forward captured in this graph, and its latent passed as "
                        "`hidden_states=` or first?)")


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


def _candidates(derived: list[fx.Node], exit_node: fx.Node, token_axis_of) -> list[tuple[fx.Node, int]]:
    """The 3-d tensors among `derived` before the exit to which `token_axis_of(shape)` gives
    a token axis, in graph order: (node, axis), at most MAX_ENTRY_CANDIDATES."""
    out = []
    for n in derived:
        if n is exit_node:
            break
        v = value(n)
        if isinstance(v, torch.Tensor) and v.dim() == 3:
            axis = token_axis_of(tuple(v.shape))
            if axis is not None:
                out.append((n, axis))
    return out[:MAX_ENTRY_CANDIDATES]


def _folded_layout(batch: int, exit_node: fx.Node):
    """The TokenGrid of an exit [B*G, S, C] whose batch axis holds G groups of S image tokens
    behind the batch B of the `hidden_states` input (Latte's frames: rows b*G + g, token
    g*S + s), or None. The entry is then a tensor of the same shape derived from the input."""
    rows, size, channels = tuple(value(exit_node).shape)
    if rows == batch or rows % batch or size < 2:
        return None
    groups = rows // batch
    layout = Layout.image(groups * size)
    outer = ((GridFactor(None, batch),) if batch > 1 else ()) + (GridFactor(0, groups),)
    return TokenGrid((groups, size), (outer, (GridFactor(1, size),),
                                      (GridFactor(None, channels),) if channels > 1 else ()), layout)


def _no_entry(source: fx.Node, exit_node: fx.Node, batch):
    """Raise why no entry candidate exists. The exit [d0, d1, C] was read as
    [batch, tokens, channels]; when it is computed from `source` (`batch` given, else None)
    but d0 is not its batch, the graph holds image tokens in a layout the analysis does not
    follow."""
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
            raise Unrewritable("dynamo handed over symbolic shapes (dynamic=True, or the default "
                               "dynamic=None after a second resolution or batch size: every shape, the "
                               "first included, then runs this graph); compile with dynamic=False to get "
                               "one static graph per shape")
    path = _output_path(gm)
    exit_node = _find_exit(gm, path)
    source = _hidden_states_input(gm)
    batch = value(source).shape[0] if value(source).dim() else None
    exit_node = _batch_first_exit(path, batch) or exit_node
    derived = _derived(gm, source, exit_node)
    reaches_exit = batch is not None and bool(derived) and derived[-1] is exit_node
    tokens = value(exit_node).shape[1]

    def token_axis(shape):      # [B, N, C], or sequence-first [N, B, C] (ErnieImage's blocks)
        return 1 if shape[:2] == (batch, tokens) else 0 if shape[:2] == (tokens, batch) else None

    candidates = ([(entry, axis, None) for entry, axis in _candidates(derived, exit_node, token_axis)]
                  if batch is not None else [])
    folded = _folded_layout(batch, exit_node) if reaches_exit and not candidates else None
    if folded is not None:
        exit_rows = tuple(value(exit_node).shape[:2])
        candidates = [(entry, 1, folded) for entry, _ in
                      _candidates(derived, exit_node, lambda shape: 1 if shape[:2] == exit_rows else None)]
    if not candidates:
        _no_entry(source, exit_node, batch if reaches_exit else None)
    errors = []
    for entry, entry_dim, grid in candidates:
        try:
            return Propagation(gm, entry, exit_node, entry_dim, grid).run()
        except Unrewritable as e:
            errors.append(e)
    # the candidate that got furthest is the real entry; its error is the reason
    raise max(errors, key=lambda e: e.progress)
