"""Data the passes share: token layouts and the rewrite plan found by `token_layout`.

Vocabulary:
  image tokens  the N latent patches Jano may skip; `active_index` [n] selects n of them
  text tokens   any other tokens in a joint sequence (prompt, registers): always recomputed
  layout        what a token axis holds, in order, e.g. [text 7 | image 64] (FLUX, CogVideoX)
                or [image 64 | text 5] (SD3); its gathered length is 7 + n
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch.fx as fx

TEXT = "text"
IMAGE = "image"


@dataclass(frozen=True)
class Segment:
    kind: str   # TEXT or IMAGE
    size: int   # full (ungathered) number of tokens


@dataclass(frozen=True)
class Layout:
    """The segments along a token axis, in sequence order; exactly one is IMAGE."""
    segments: tuple[Segment, ...]

    @staticmethod
    def image(num_tokens: int) -> "Layout":
        return Layout((Segment(IMAGE, num_tokens),))

    @property
    def full_length(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def is_image_only(self) -> bool:
        return len(self.segments) == 1

    def offsets(self) -> list[int]:
        """Full-length start offset of each segment."""
        out, acc = [], 0
        for s in self.segments:
            out.append(acc)
            acc += s.size
        return out

    def __str__(self) -> str:
        return "[" + " | ".join(f"{s.kind} {s.size}" for s in self.segments) + "]"


@dataclass(frozen=True)
class TokenAxis:
    """`dim` of a tensor holds the tokens described by `layout` (gathered at run time)."""
    dim: int
    layout: Layout


@dataclass(frozen=True)
class ShapeLiteral:
    """`node`'s shape argument at `position` is the full length of `layout`: it becomes the
    gathered length (or -1 where `use_minus_one`, e.g. for expand)."""
    node: fx.Node
    position: int
    layout: Layout
    use_minus_one: bool = False


@dataclass(frozen=True)
class SplitSizes:
    """`node` splits a token axis into the segments of `layout` (split_with_sizes [7, 64])."""
    node: fx.Node
    layout: Layout


@dataclass(frozen=True)
class SegmentSlice:
    """`node` (getitem) slices the token axis at `position` of its index tuple to exactly
    segment `segment` of `layout` (FLUX's hidden_states[:, 7:])."""
    node: fx.Node
    position: int
    layout: Layout
    segment: int


@dataclass(frozen=True)
class SqueezeDims:
    """`node` is squeeze() without dims; it must name them, since a gathered axis may be 1."""
    node: fx.Node
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TableGather:
    """Argument `arg` of `node` is a per-token side table (RoPE cos/sin, position table,
    attention-mask rows) whose `dim` runs over the full `layout`; it is gathered."""
    node: fx.Node
    arg: fx.Node
    dim: int
    layout: Layout


@dataclass(frozen=True)
class FrameGroups:
    """Image tokens split into `frames` equal groups of consecutive tokens (frames): axis
    `dim` runs over the groups, axis dim + 1 within a group ([B, S, H, D] -> [B, T, S/T, H, D]).
    Rewritten, every gathered token is its own group: [B, n, 1, H, D]."""
    dim: int
    layout: Layout
    frames: int


@dataclass(frozen=True)
class FrameRows:
    """The groups of `FrameGroups` folded into axis 0 behind the batch ([B*T, S/T, H, D]);
    axis `dim` runs within a group. Rewritten: [B*n, 1, H, D], one row per gathered token."""
    dim: int
    layout: Layout
    frames: int
    batch: int


@dataclass(frozen=True)
class GroupCount:
    """`node` is unflatten whose sizes at `position` count the frames of the image tokens
    (`FrameGroups`): that size becomes the gathered count n, and the group size after it,
    if any, 1 (sizes (T, -1) -> (n, 1); (B, T) -> (B, n))."""
    node: fx.Node
    position: int
    layout: Layout


@dataclass(frozen=True)
class FrameKeys:
    """Argument `arg` of attention `node` holds keys or values per frame, [B*T, L, H, D]
    (`batch` B, `frames` T), for queries in `FrameRows`: they are gathered per query token
    by its frame (token i lies in frame i // `group_size`) -> [B*n, L, H, D]."""
    node: fx.Node
    arg: fx.Node
    layout: Layout
    frames: int
    batch: int
    group_size: int


@dataclass(frozen=True)
class GridFactor:
    """One factor of a tensor axis: grid axis `axis` of a `TokenGrid` (None: another axis,
    batch or channels) of full size `size` (> 1)."""
    axis: Optional[int]
    size: int


@dataclass(frozen=True)
class TokenGrid:
    """Image tokens unflattened into a grid of `sizes` (row-major: token i sits at
    unravel_index(i, sizes); every size > 1), laid out over a tensor's axes: `dims[d]` lists
    the factors axis d holds, outermost first (Sana's Mix-FFN conv input [B, C, H, W]:
    ((), (C,), (g0,), (g1,)); SanaVideo's frames folded into the batch [B*F, C, H, W]:
    ((B, g0), (C,), (g1,), (g2,))). Rewritten, grid axis 0 holds the n gathered tokens
    and every other grid axis 1: [B, C, n, 1]."""
    sizes: tuple[int, ...]
    dims: tuple[tuple[GridFactor, ...], ...]
    layout: Layout


@dataclass(frozen=True)
class GridShape:
    """`node` (view, reshape, unflatten) gives the sizes of axes that hold grid factors:
    `sizes[i]` (the argument at position `first` + i) is (product of its other factors,
    whether it holds grid axis 0, the one that carries the n gathered tokens); None where
    the argument stays."""
    node: fx.Node
    first: int
    sizes: tuple


@dataclass(frozen=True)
class ConstantPad:
    """`node` is F.pad(x, pads, "constant", value) of a tensor holding image tokens, padding
    other axes only (Sana's value padded by a ones channel); it becomes a cat with constant
    blocks: constant_pad_nd reads every size as an int, which fixes the token count n."""
    node: fx.Node


@dataclass(frozen=True)
class PointwiseConv:
    """`node` is a convolution with a 1-wide kernel (stride 1, no padding, one group) over
    axes that hold image tokens on their grid: a linear map of the channels, it becomes one
    (F.linear over channels last), since a gathered grid [B, C, n, 1] is empty when n is 0
    and convolutions refuse empty spatial axes."""
    node: fx.Node


@dataclass(frozen=True)
class GridTable:
    """Operand `arg` of the element-wise op `node` holds no image token but varies along axes
    that hold the token grid `grid` (a per-frame or per-position modulation [B*F, 1, C] on
    frames folded into the batch [B*F, S, C]; a per-frame table [1, F, C] on positions folded
    into the batch [B*S, F, C]): it is expanded over those axes to the full grid and its rows
    of the gathered tokens are taken (`grid`: the expanded table's layout)."""
    node: fx.Node
    arg: fx.Node
    grid: TokenGrid


@dataclass(frozen=True)
class MixedOperand:
    """Operand `arg` of a token-mixing op holds image tokens on `axis` (a TokenAxis or a
    TokenGrid): it is completed from a cache of every image token before the op."""
    arg: fx.Node
    axis: object


@dataclass(frozen=True)
class MixingSite:
    """An op that mixes image tokens (a reduction or a contraction over the token axis, a
    convolution over the token grid): it runs on its operands completed to all N tokens;
    where its result holds image tokens (`output`: its TokenGrid), the active ones are
    gathered back from it."""
    node: fx.Node
    operands: tuple[MixedOperand, ...]
    output: Optional[TokenGrid] = None


#: the kinds of per-node literal edit (TokenPlan.literals) that token_shapes applies
LiteralEdit = Union[ShapeLiteral, SplitSizes, SegmentSlice, SqueezeDims, GroupCount, GridShape, ConstantPad,
                    PointwiseConv]


SELF = "self"            # queries and keys hold image tokens (maybe joint with text)
CROSS = "cross"          # queries hold image tokens, keys and values do not (text)
TO_IMAGE = "to_image"    # queries hold no image token (audio, text), keys and values do


@dataclass(frozen=True)
class AttentionSite:
    """One attention call, by what its queries and keys hold:

      SELF      q [B, H, T+N, D]  k, v [B, H, T+N, D]   Q gathered, K/V completed from the cache
      CROSS     q [B, H, N, D]    k, v [B, H, L, D]     Q gathered, K/V untouched
      TO_IMAGE  q [B, H, L, D]    k, v [B, H, N, D]     Q untouched (every row is computed),
                                                         K/V completed from the cache
                (LTX-2's video-to-audio attention: audio queries, video keys)

    `query` is the token axis of the queries (None for TO_IMAGE); `key` that of the keys and
    values (None for CROSS)."""
    node: fx.Node
    kind: str
    query: Optional[TokenAxis]
    key: Optional[TokenAxis] = None
    key_node: Optional[fx.Node] = None
    value_node: Optional[fx.Node] = None

    @property
    def completes_keys(self) -> bool:
        """Its keys and values hold image tokens: the gathered rows are completed from a
        per-layer cache of the full sequence."""
        return self.key is not None


REUSE_MODES = ("hold", "forecast")


@dataclass(frozen=True)
class PassConfig:
    """How the rewrite treats the tokens a step does not compute: `reuse="hold"` keeps
    their last output (the paper), `"forecast"` extrapolates it with Newton divided
    differences of `forecast_order` (1 or 2) over each token's own computation times;
    `forecast_kv` extrapolates their keys and values too (order 1; "forecast" only)."""
    reuse: str = "hold"
    forecast_order: int = 1
    forecast_kv: bool = False

    def __post_init__(self):
        if self.reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {REUSE_MODES}, got {self.reuse!r}")
        if self.forecast_kv and self.reuse != "forecast":
            raise ValueError('forecast_kv needs reuse="forecast"')


@dataclass
class TokenPlan:
    """What `token_layout` found; the rewriting passes apply it."""
    num_image_tokens: int
    entry: fx.Node
    exit: fx.Node
    entry_dim: int = 1                                # token axis of the entry: 1 [B, N, C], 0 [N, B, C]
    # entry and exit with groups of tokens folded into the batch (Latte's frames, [B*F, S, C]:
    # ((B, frames), (tokens of a frame,), (C,))); None: [B, N, C] or [N, B, C]
    folded: Optional[TokenGrid] = None
    axes: dict = field(default_factory=dict)          # Node -> label (token_propagation), never None
    attention: list = field(default_factory=list)     # AttentionSite
    literals: list = field(default_factory=list)      # LiteralEdit: per-node edits of token_shapes
    tables: list = field(default_factory=list)        # TableGather
    frame_keys: list = field(default_factory=list)    # FrameKeys
    mixing: list = field(default_factory=list)        # MixingSite
    grid_tables: list = field(default_factory=list)   # GridTable


class Unrewritable(Exception):
    """The graph cannot be rewritten safely.

    `reason` says why (shown in the report); `progress` is how many nodes the token analysis
    labelled before it stopped, so that of several entry candidates the one that got
    furthest gives the reason."""

    def __init__(self, reason: str, progress: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.progress = progress


class NoImageTokens(Unrewritable):
    """The graph holds no image-token region at all (a plain MLP, the tail of a graph break):
    nothing to rewrite, and nothing a user of a DiT needs to be warned about for this graph."""
