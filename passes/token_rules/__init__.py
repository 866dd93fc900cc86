"""The token rules: for each op the token analysis meets, the rule that says what happens to
the image tokens it reads. Keyed by the op, as data: a new op is one more entry.

A rule is `rule(p, node, name) -> label`, with `p` the running `token_propagation.Propagation`,
`node` an op whose operands carry labels (`p.ax(a)`: a TokenAxis, a TokenGrid, FrameGroups or
FrameRows, or a tuple of them) and `name` its op name (`nodes.op_name`). It returns the label
of the result (None: it holds no image token), records in `p.plan` what the rewrite must
change (literals tied to the token count, tables gathered with the tokens, attention and
token-mixing sites), and calls `p.fail(node, why)` where the op is not provably token-wise.

    RULES              by op name, for tokens on one axis (TokenAxis)
    TARGET_RULES       by call target, first: indexing, in-place writes, attention
    GRID_RULES         by op name, for tokens laid out on their grid (TokenGrid)
    GRID_TARGET_RULES  by call target, first, on the grid
    FRAME_RULES        by op name, for tokens split into frames (FrameGroups, FrameRows): the
                       frames' own layout changes; every other op runs on the grid rules
    FRAME_TARGET_RULES by call target, first, in frames: attention within each frame
"""
from __future__ import annotations

import operator
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import torch.nn.functional as F

from . import attention, elementwise, frames, grid, views
from .op_names import (CHANNEL_WISE, CONCATENATIONS, CONVOLUTIONS, DATA_FIRST_ONLY, LIKE, NEW_OF_SIZE,
                       ORDER_DEPENDENT, PERMUTATIONS, PLACED_BY_INDEX, POINTWISE, REDUCTIONS, SPLITS)

Rule = Callable  # (Propagation, fx.Node, str) -> label


def by_key(*entries: tuple[Iterable, Rule]) -> Mapping:
    """A read-only table from (keys, rule) entries; a key given twice must name the same rule."""
    table: dict = {}
    for keys, rule in entries:
        for key in keys:
            if table.setdefault(key, rule) is not rule:
                raise ValueError(f"two token rules for {key!r}: {table[key].__name__} and {rule.__name__}")
    return MappingProxyType(table)


TARGET_RULES = by_key(
    ([operator.getitem], views.getitem),
    ([operator.setitem], views.setitem),
    ([F.scaled_dot_product_attention], attention.attention),
)

RULES = by_key(
    (POINTWISE | DATA_FIRST_ONLY, elementwise.pointwise),
    (["linear"], elementwise.linear),
    (["layer_norm", "rms_norm"], elementwise.norm),
    (["softmax", "log_softmax"], elementwise.softmax),
    (REDUCTIONS | ORDER_DEPENDENT, elementwise.reduction),
    (PLACED_BY_INDEX, elementwise.placed_by_index),
    (["repeat_interleave"], elementwise.repeat_interleave),
    (["repeat", "tile"], elementwise.repeat),
    (["matmul", "bmm", "mm"], elementwise.matmul),
    (["view", "reshape"], views.reshape),
    (["expand"], views.expand),
    (["flatten"], views.flatten),
    (["unflatten"], views.unflatten),
    (PERMUTATIONS, views.permute),
    (["unsqueeze"], views.unsqueeze),
    (["squeeze"], views.squeeze),
    (CONCATENATIONS, views.cat),
    (["stack"], views.stack),
    (SPLITS, views.split),
    (["view_as_complex"], views.view_as_complex),
    (["view_as_real"], views.view_as_real),
    (["einsum"], views.einsum),
    (LIKE, views.like),
    (NEW_OF_SIZE, views.new_of_size),
    (CONVOLUTIONS, grid.convolution),
    (["pad"], grid.pad),
)

# ops whose tensors may all come as keyword arguments; every other rule reads args[0]
KEYWORD_CALLS = CONCATENATIONS | {"stack"}

GRID_TARGET_RULES = by_key(
    ([operator.getitem], grid.grid_index),
    ([F.scaled_dot_product_attention], grid.grid_attention),
)

GRID_RULES = by_key(
    (CONVOLUTIONS, grid.convolution),
    (CHANNEL_WISE, grid.grid_channels),
    (DATA_FIRST_ONLY, grid.grid_data_first),
    (POINTWISE - DATA_FIRST_ONLY, grid.grid_pointwise),
    (PERMUTATIONS, grid.grid_permute),
    (["view", "reshape", "flatten", "unflatten"], grid.grid_reshape),
    (["chunk", "split"], grid.grid_chunk),
    (["pad"], grid.pad),
)

FRAME_TARGET_RULES = by_key(
    ([F.scaled_dot_product_attention], frames.frame_attention),
)

FRAME_RULES = by_key(
    (DATA_FIRST_ONLY, frames.keep_frames),
    (["flatten"], frames.flatten_frames),
    (["unflatten"], frames.unfold_frames),
    (PERMUTATIONS, frames.permute_frames),
)

__all__ = ["FRAME_RULES", "FRAME_TARGET_RULES", "GRID_RULES", "GRID_TARGET_RULES", "KEYWORD_CALLS", "RULES",
           "TARGET_RULES", "Rule", "by_key"]
