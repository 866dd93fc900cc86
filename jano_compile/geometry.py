"""Where a model's image tokens sit: derived from the model's config and what it receives.

The automatic schedule records the latents a warm-up step receives as image tokens
[B, N, C] in the order of the model's sequence (frames first, then row-major over the
patch grid) with the grid (frames, h, w). Nothing here is listed per model family (one
exception, below): the class gives the family name (presets), the config the patch size
and input channels, and each call the rest, from the rank of `hidden_states`:

    [B, N, C]        packed tokens (FLUX, LTX-Video): the grid from position ids (`img_ids`,
                     one row (frame, row, column, ...) per token), else from the graph's
                     rotary grid (`grid_from_graph`); never guessed from N
    [B, C, H, W]     an image cut into ph x pw patches (SD3, PixArt, AuraFlow, HunyuanDiT)
    [B, C, F, H, W]  a video cut into pt x ph x pw patches (Wan, HunyuanVideo, Allegro)
    [B, F, C, H, W]  the same, frames before channels (CogVideoX): told apart by which axis
                     holds the config's `in_channels`
    [B, F, H, W, C]  the same, channels last (Kandinsky 5 and 6)
                     A video's layout is the one whose channel axis holds the config's
                     `in_channels`; where several axes do (or the config names none), the
                     class's table entry, else the one whose patch grid holds the graph's
                     image tokens, else (the config names its channels) channels first

A packed sequence may hold slots that are not the latent's (Ideogram 4 packs [padding | text |
image] into `hidden_states` and zeroes all but the image rows with a mask of a role input):
where the graph multiplies the latent input by such a per-token mask and reads it nowhere
else, `latent_rows_from_graph` cuts that mask out of the graph; its rows are the grid's
tokens, and `SequenceSlots` places the schedule's grid tokens among the graph's sequence,
every other slot computed whenever any grid token is.

Where the derivation cannot decide, `image_tokens` raises `GeometryError` with the reason
(the automatic schedule then stays off) rather than return a wrong grid. The one table
left, `video_layout_table()`, is keyed by class and read only when a 5-D input is
ambiguous (several of its axes could hold the channels: frames == channels, as Wan's and
HunyuanVideo's 16 channels at 16 latent frames, 61 video frames); it lists the classes that
take frames first, and every other class whose config names its channels takes diffusers'
convention, [B, C, F, H, W].

    geometry = geometry_for(model)                                   # cheap: class and config
    tokens, grid = image_tokens(geometry, hidden_states, img_ids)          # per warm-up step
    rows = latent_rows_from_graph(gm)(args)                          # packed slots: the latent's rows
"""
from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.fx as fx

from jano_compile.passes.input_roles import argument_name, hidden_states_input
from jano_compile.passes.nodes import ancestors, placeholders, value

PACKED, IMAGE, VIDEO_CF, VIDEO_FC, VIDEO_FHWC = "packed", "image", "video_cf", "video_fc", "video_fhwc"
#: the axis of a video's channels, per layout: [B, C, F, H, W], [B, F, C, H, W], [B, F, H, W, C]
VIDEO_CHANNEL_AXIS = {VIDEO_CF: 1, VIDEO_FC: 2, VIDEO_FHWC: 4}


class GeometryError(ValueError):
    """The token grid of this call cannot be derived; the message says why."""


@dataclass(frozen=True)
class TokenGeometry:
    """What a model's class and config say about its tokens; the input's rank says the rest.

    family: lower-case name of the model family, for config presets ("flux", "wan", "sd3"):
        the stem of the diffusers class the model is or derives from.
    patch: (pt, ph, pw) from the config (`patch_size` int or 2-/3-tuple, `patch_size_t`),
        or None when the config declares none (then only packed tokens can be placed).
    in_channels: channels of `hidden_states` by the config, or None.
    video_layout: a video layout from `video_layout_table()`, for a 5-D input where several axes
        could hold the channels; None for classes without an entry.
    """
    family: str
    patch: Optional[tuple[int, int, int]] = None
    in_channels: Optional[int] = None
    video_layout: Optional[str] = None


@functools.lru_cache(maxsize=1)
def video_layout_table() -> dict:
    """The layout of 5-D `hidden_states` per class (subclasses included), read only where
    frames == channels make the shape ambiguous. diffusers is imported here, not when
    jano_compile is."""
    import diffusers
    names = {"CogVideoXTransformer3DModel": VIDEO_FC, "ConsisIDTransformer3DModel": VIDEO_FC}   # resolved once
    return {getattr(diffusers, name): layout for name, layout in names.items() if hasattr(diffusers, name)}


@functools.lru_cache(maxsize=None)
def _family(cls: type) -> str:
    """The stem of the diffusers class `cls` is or derives from (its own name for a model
    outside diffusers): FluxTransformer2DModel and its subclasses -> "flux"."""
    base = next((c for c in cls.__mro__ if c.__module__.startswith("diffusers.")
                 and not c.__name__.endswith("Mixin")), cls)
    return re.sub(r"(Transformer)?[23]D(Model)?$|Model$", "", base.__name__).lower() or base.__name__.lower()


def _patch(config: Mapping) -> Optional[tuple[int, int, int]]:
    """(pt, ph, pw) from `patch_size` (an int, (ph, pw) or (pt, ph, pw)) and `patch_size_t`."""
    p = config.get("patch_size")
    if p is None:
        return None
    if isinstance(p, Sequence):
        p = tuple(int(x) for x in p)
        if len(p) == 3:
            return p
        if len(p) == 2:
            return (1, *p)
        if len(p) != 1:
            return None
        p = p[0]
    return (int(config.get("patch_size_t") or 1), int(p), int(p))


def geometry_for(module: Optional[torch.nn.Module]) -> Optional[TokenGeometry]:
    """The geometry of `module`: its family and what its config says of patches and input
    channels. None only without a module."""
    if module is None:
        return None
    config = getattr(module, "config", None)
    config = config if isinstance(config, Mapping) else {}
    in_channels = config.get("in_channels")
    layout = next((v for c, v in video_layout_table().items() if isinstance(module, c)), None)
    return TokenGeometry(_family(type(module)), _patch(config),
                         int(in_channels) if isinstance(in_channels, int) else None, layout)


def _ids_grid(ids: torch.Tensor) -> tuple[int, int, int]:
    """The grid of position ids [N, k] (frame, row, column first), checked: every grid
    position once, in sequence order frames first then row-major. Offsets and strides of
    the ids do not matter (each axis is ranked)."""
    n = ids.shape[0]
    ranks, sizes = [], []
    for axis in range(3):
        values, rank = torch.unique(ids[:, axis], return_inverse=True)
        ranks.append(rank)
        sizes.append(values.numel())
    frames, h, w = sizes
    if frames * h * w != n:
        raise GeometryError(f"the position ids span a {frames}x{h}x{w} grid, not {n} tokens")
    order = (ranks[0] * h + ranks[1]) * w + ranks[2]
    if not torch.equal(order, torch.arange(n, device=order.device)):
        raise GeometryError("the position ids are not in sequence order (frames first, row-major)")
    return frames, h, w


def grid_from_ids(ids: torch.Tensor, num_tokens: int) -> tuple[int, int, int]:
    """The grid (frames, h, w) of `num_tokens` packed tokens from their position ids
    ([M, k] or [B, M, k], k >= 3: frame, row, column, further axes ignored). Ids that also
    cover the text (M > N: a joint sequence, Krea2) place the image at their first or last
    N rows, whichever alone forms a grid."""
    if ids.dim() == 3:
        if not bool((ids == ids[:1]).all()):
            raise GeometryError("the position ids differ between samples of the batch")
        ids = ids[0]
    if ids.dim() != 2 or ids.shape[0] < num_tokens or ids.shape[1] < 3:
        raise GeometryError(f"position ids of shape {tuple(ids.shape)} do not give (frame, row, column) "
                            f"for each of {num_tokens} tokens")
    if ids.shape[0] == num_tokens:
        return _ids_grid(ids)
    grids, errors = [], []
    for rows in (ids[:num_tokens], ids[-num_tokens:]):
        try:
            grids.append(_ids_grid(rows))
        except GeometryError as e:
            errors.append(str(e))
    if len(grids) != 1:
        raise GeometryError(f"{ids.shape[0]} position ids for {num_tokens} tokens: "
                            + ("both their first and last rows form a grid" if grids else "; ".join(errors)))
    return grids[0]


def _static_shape(node) -> Optional[tuple[int, ...]]:
    shape = getattr(value(node), "shape", None)
    return tuple(shape) if shape is not None and all(isinstance(d, int) for d in shape) else None


def _meshgrid_grid(node: fx.Node) -> Optional[tuple[int, ...]]:
    """`torch.meshgrid(arange(f), arange(h), arange(w))`: the sizes in flatten order."""
    if node.op != "call_function" or node.target is not torch.meshgrid:
        return None
    inputs = node.args[0] if len(node.args) == 1 and isinstance(node.args[0], (list, tuple)) else node.args
    shapes = [_static_shape(a) for a in inputs]
    if not shapes or any(s is None or len(s) != 1 for s in shapes):
        return None
    sizes = [s[0] for s in shapes]
    if node.kwargs.get("indexing", "ij") == "xy" and len(sizes) >= 2:
        sizes[0], sizes[1] = sizes[1], sizes[0]
    return tuple(sizes)


_FLATTENS = {"reshape", "view", "flatten", torch.reshape, torch.flatten}


def _flattened_table_grid(node: fx.Node) -> Optional[tuple[int, ...]]:
    """A position table [(1,) f, h, w, D] flattened to [(1, ...) f*h*w, D] (Qwen-Image's
    rotary table): the leading sizes of the table."""
    if node.op not in ("call_method", "call_function") or node.target not in _FLATTENS or not node.args:
        return None
    table, flat = _static_shape(node.args[0]), _static_shape(node)
    if table is None or flat is None or len(table) < 3 or table[-1] != flat[-1]:
        return None
    if sum(d != 1 for d in flat[:-1]) != 1:      # one token axis (the sizes multiply to it)
        return None
    sizes = list(table[:-1])
    while len(sizes) > 3 and sizes[0] == 1:
        sizes.pop(0)
    return tuple(sizes) if 2 <= len(sizes) <= 3 else None


def grid_from_graph(gm: fx.GraphModule, num_tokens: int) -> Optional[tuple[int, int, int]]:
    """The token grid of the model's position table, read from the captured graph, for
    packed tokens that come without position ids. Two forms, built from sizes that dynamo
    keeps as constants, never from the latent (`hidden_states`):

        torch.meshgrid(arange(f), arange(h), arange(w))        LTX-Video
        table [1, f, h, w, D] -> reshape(f * h * w, D)          Qwen-Image, NucleusMoE

    whose sizes hold `num_tokens` points, frames first. None when there is none, or
    several that disagree."""
    latent = hidden_states_input(gm)
    from_latent = {latent} if latent is not None else set()
    grids = set()
    for node in gm.graph.nodes:
        if node in from_latent or any(a in from_latent for a in node.all_input_nodes):
            from_latent.add(node)
            continue
        sizes = _meshgrid_grid(node) or _flattened_table_grid(node)
        if sizes is not None and len(sizes) in (2, 3) and torch.Size(sizes).numel() == num_tokens:
            grids.add(tuple([1] * (3 - len(sizes)) + list(sizes)))
    return grids.pop() if len(grids) == 1 else None


_PRODUCTS = {operator.mul, torch.mul, "mul"}


@dataclass(frozen=True)
class LatentRows:
    """The rows of packed `hidden_states` [B, L, C] that hold the latent, as the model itself
    says: it multiplies the latent by a per-token mask computed from its other inputs alone,
    and reads the latent nowhere else (Ideogram 4, whose sequence is [padding | text | image]):

        mask = (indicator == 2).to(float32).unsqueeze(-1)     [B, L, 1]   <- `mask`, cut out
        h    = hidden_states * mask                           [B, L, C]   the latent's only use

    A row the mask zeroes never reaches the model's output through the latent: it is a slot
    for other inputs (text, padding), not a token of the latent grid.

    mask: the graph of `mask` alone, reading the placeholders at `inputs` (positions among
        the graph's placeholders) named `names` (the model's arguments, None where nested).
    """
    mask: fx.GraphModule
    inputs: tuple[int, ...]
    names: tuple[Optional[str], ...]

    def __call__(self, args: Sequence) -> torch.Tensor:
        """The latent's rows [n] (sorted int64, on the CPU) for a call with graph arguments `args`."""
        return self._rows(self.mask(*[args[i] for i in self.inputs]))

    def of_arguments(self, arguments: Mapping) -> torch.Tensor:
        """The same for the model's keyword arguments (what a caller outside the graph holds)."""
        if None in self.names or any(name not in arguments for name in self.names):
            raise GeometryError(f"the latent's mask reads inputs {self.names}, not all model arguments given")
        return self._rows(self.mask(*[arguments[name] for name in self.names]))

    @staticmethod
    def _rows(mask: torch.Tensor) -> torch.Tensor:
        keep = (mask != 0).reshape(mask.shape[0], mask.shape[1], -1).any(-1)     # [B, L]
        if not bool((keep == keep[:1]).all()):
            raise GeometryError("the latent's mask keeps other rows in each sample of the batch")
        rows = keep[0].nonzero().flatten().cpu()
        if rows.numel() == 0:
            raise GeometryError("the latent's mask keeps no row")
        return rows


def latent_rows_from_graph(gm: fx.GraphModule) -> Optional[LatentRows]:
    """The mask that keeps the latent's rows of packed `hidden_states` [B, L, C] (`LatentRows`),
    where the graph's only use of the latent is a product with a per-token factor [B or 1, L, 1]
    computed without it; None otherwise (every row is the latent's)."""
    inputs = placeholders(gm.graph)
    latent = hidden_states_input(gm)
    shape = _static_shape(latent)
    if shape is None or len(shape) != 3 or len(latent.users) != 1:
        return None
    (use,) = latent.users
    if use.op not in ("call_function", "call_method") or use.target not in _PRODUCTS \
            or len(use.args) != 2 or use.kwargs or use.args[0] is use.args[1]:
        return None
    mask = use.args[1] if use.args[0] is latent else use.args[0]
    mask_shape = _static_shape(mask)
    if mask_shape is None or len(mask_shape) != 3 or mask_shape[1:] != (shape[1], 1) \
            or mask_shape[0] not in (1, shape[0]):
        return None
    needed = ancestors(mask)
    graph, copies = fx.Graph(), {}
    for node in gm.graph.nodes:
        if node in needed:
            copies[node] = graph.node_copy(node, lambda a: copies[a])
    graph.output(copies[mask])
    sources = [p for p in inputs if p in needed]
    return LatentRows(fx.GraphModule(gm, graph), tuple(inputs.index(p) for p in sources),
                      tuple(argument_name(p) for p in sources))


@dataclass(frozen=True)
class SequenceSlots:
    """The latent grid's tokens among the graph's `length` tokens: grid token k is row
    `rows[k]` of the sequence; every other row is a slot (text, padding) that each call
    computing any grid token computes too, as FLUX computes its text tokens every step."""
    rows: torch.Tensor
    length: int

    def sequence_index(self, grid_index: torch.Tensor) -> torch.Tensor:
        """The sorted rows a call computes for the grid tokens at `grid_index`: those and
        every slot; none when no grid token is due (a skipped step computes nothing)."""
        if grid_index.numel() == 0:
            return grid_index
        computed = torch.ones(self.length, dtype=torch.bool)
        computed[self.rows] = False
        computed[self.rows[grid_index]] = True
        return computed.nonzero().flatten()

    def on_grid(self, values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Per-row `values` [length] of the sequence, those of the grid's tokens [n]."""
        return values if values is None or values.numel() != self.length else values[self.rows]


def latent_layout(geometry: TokenGeometry, hidden_states: torch.Tensor,
                  num_tokens: Optional[int] = None) -> str:
    """PACKED, IMAGE, VIDEO_CF, VIDEO_FC or VIDEO_FHWC: how `hidden_states` holds the image.
    `num_tokens` (the graph's image tokens) decides between video layouts the config's
    channels leave open."""
    shape, c = tuple(hidden_states.shape), geometry.in_channels
    if len(shape) == 3:
        if c is not None and shape[2] != c:
            raise GeometryError(f"packed tokens {shape} have {shape[2]} channels, the config {c}")
        return PACKED
    if len(shape) == 4:
        if c is not None and shape[1] != c:
            raise GeometryError(f"image {shape} has {shape[1]} channels, the config {c}")
        return IMAGE
    if len(shape) == 5:
        return _video_layout(geometry, shape, num_tokens)
    raise GeometryError(f"hidden_states of rank {len(shape)}: not tokens, an image or a video")


def _video_layout(geometry: TokenGeometry, shape: tuple, num_tokens: Optional[int]) -> str:
    """The layout of a video: the one whose channel axis holds the config's `in_channels`;
    where several do, the class's table entry, else the one whose patch grid holds the
    graph's `num_tokens`, else diffusers' convention (channels first) where the config names
    the channels. A config without `in_channels` (Kandinsky names them `in_visual_dim`,
    widens them with conditioning channels and takes them last) leaves all three open."""
    c = geometry.in_channels
    layouts = [layout for layout, axis in VIDEO_CHANNEL_AXIS.items() if c is None or shape[axis] == c]
    if not layouts:
        raise GeometryError(f"video {shape}: no channel axis of the config's {c} channels at 1, 2 or 4")
    if len(layouts) == 1:
        return layouts[0]
    if geometry.video_layout in layouts:
        return geometry.video_layout
    held = f"the config's {c} channels" if c is not None else "channels (the config has no in_channels)"
    axes = [VIDEO_CHANNEL_AXIS[layout] for layout in layouts]
    candidates, cut = layouts, ""
    if num_tokens is not None and geometry.patch is not None:
        candidates = [layout for layout in layouts
                      if torch.Size(_video_grid(shape, layout, geometry.patch)).numel() == num_tokens]
        if len(candidates) == 1:
            return candidates[0]
        cut = f", and {len(candidates)} of these layouts cut it into the graph's {num_tokens} image tokens"
    if c is not None and VIDEO_CF in candidates:
        return VIDEO_CF         # diffusers' convention; the table lists the classes that differ
    raise GeometryError(f"video {shape}: axes {axes} could hold {held}{cut}; add the class to "
                        "geometry.video_layout_table()")


def _video_grid(shape: tuple, layout: str, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """(frames, h, w) patches of a video of `shape` [B, ...] held in `layout`."""
    axis = VIDEO_CHANNEL_AXIS[layout]
    f, h, w = (d for i, d in enumerate(shape[1:], start=1) if i != axis)
    return f // patch[0], h // patch[1], w // patch[2]


def image_tokens(geometry: TokenGeometry, hidden_states: torch.Tensor,
                 img_ids: Optional[torch.Tensor] = None,
                 grid_hint: Optional[tuple[int, int, int]] = None,
                 num_tokens: Optional[int] = None,
                 rows: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """`hidden_states` as image tokens [B, N, C'] in sequence order, and the grid (frames, h, w).

    Packed tokens pass through; the grid comes from `img_ids` when given, else from
    `grid_hint` (`grid_from_graph`). An image or video is cut into patches as the model's
    patch embedding does (a stride-p convolution: a border that does not fill a patch is
    dropped); C' = C * pt * ph * pw. `num_tokens`, the graph's image tokens, decides the
    layout of a video whose config names no channels. `rows` (`LatentRows`): the rows of packed
    tokens that hold the latent; the others are slots, left out (position ids covering every
    row are cut to these rows too). Raises GeometryError when the grid cannot be derived."""
    x = hidden_states
    layout = latent_layout(geometry, x, num_tokens)
    if layout == PACKED:
        if rows is not None:
            if img_ids is not None and img_ids.dim() >= 2 and img_ids.shape[-2] == x.shape[1]:
                img_ids = img_ids.index_select(-2, rows.to(img_ids.device))
            x = x.index_select(1, rows.to(x.device))
        b, n, _ = x.shape
        if img_ids is not None and img_ids.numel():
            return x, grid_from_ids(img_ids, n)
        if grid_hint is not None and torch.Size(grid_hint).numel() == n:
            return x, tuple(grid_hint)
        raise GeometryError(f"{n} packed tokens without position ids or a rotary grid in the graph: "
                            "their frames, height and width are not in the inputs")
    if geometry.patch is None:
        raise GeometryError("the config declares no patch_size")
    pt, ph, pw = geometry.patch
    if layout == IMAGE:
        x = x.unsqueeze(2)                         # [B, C, 1, H, W]
        pt = 1
    elif layout == VIDEO_FC:
        x = x.transpose(1, 2)                      # [B, C, F, H, W]
    elif layout == VIDEO_FHWC:
        x = x.permute(0, 4, 1, 2, 3)               # [B, C, F, H, W]
    b, c, f, h, w = x.shape
    grid = (f // pt, h // ph, w // pw)
    if 0 in grid:
        raise GeometryError(f"input {tuple(hidden_states.shape)} is smaller than one {pt}x{ph}x{pw} patch")
    x = x[:, :, :grid[0] * pt, :grid[1] * ph, :grid[2] * pw]
    x = x.reshape(b, c, grid[0], pt, grid[1], ph, grid[2], pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, grid[0] * grid[1] * grid[2], c * pt * ph * pw)
    return x, grid
