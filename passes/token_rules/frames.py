"""Token rules for image tokens split into frames folded into the batch, as far as a
cross-attention per frame (WanAnimate's face adapter):

    q.unflatten(1, (T, -1))        [B, S, H, D] -> [B, T, S/T, H, D]     FrameGroups
    flatten(0, 1)                  -> [B*T, S/T, H, D]                   FrameRows
    sdpa(q, k [B*T, H, L, D], v)   each frame's queries read that frame's keys (FrameKeys)
    unflatten(0, (B, T)), flatten(1, 2)  back to [B, S, ...]             TokenAxis

Once rewritten each gathered token is its own frame group: sizes (n, 1). Ops other than
these layout changes and the attention are followed on the token grid (frames x tokens of a
frame): `token_propagation.Propagation.in_frames` hands them to the grid rules."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.fx as fx

from ..nodes import arg, attention_args, normal_dim
from ..plan import FrameGroups, FrameKeys, FrameRows, GroupCount, TokenAxis
from .permutation import permutation

if TYPE_CHECKING:
    from ..token_propagation import Propagation


def split_into_frames(p: Propagation, node: fx.Node, t: TokenAxis, sizes) -> FrameGroups:
    """q.unflatten(1, (T, -1))  [B, S, H, D] -> [B, T, S/T, H, D]: image tokens in T frames
    of S/T consecutive tokens. Followed to a per-frame cross-attention (`frame_attention`);
    the sizes become (n, 1): each gathered token is its own frame group."""
    if len(sizes) != 2 or not t.layout.is_image_only:
        p.fail(node, f"unflatten splits the token axis into {tuple(sizes)}, which the token "
               "analysis follows only as image tokens in frames (two sizes, no text)")
    frames = p.tensor(node, node).shape[t.dim]
    p.plan.literals.append(GroupCount(node, 0, t.layout))
    return FrameGroups(t.dim, t.layout, frames)


def keep_frames(p: Propagation, node: fx.Node, name: str):
    """contiguous(), .to(dtype) and kin: the frames stay where they are."""
    return p.ax(node.args[0])


def permute_frames(p: Propagation, node: fx.Node, name: str):
    """A permutation of frame rows [B*T, S/T, ..] that keeps the rows on axis 0; anything
    else runs on the token grid (frames x tokens of a frame)."""
    s = p.ax(node.args[0])
    if not isinstance(s, FrameRows):
        return p.on_grid(node, name)
    order = permutation(p, node, name)
    if order[0] != 0:
        p.fail(node, f"{name} moves the frame rows off axis 0")
    return FrameRows(order.index(s.dim), s.layout, s.frames, s.batch)


def flatten_frames(p: Propagation, node: fx.Node, name: str):
    """[B, T, S/T, ..] flatten(0, 1) -> [B*T, S/T, ..] (frames into the batch); [B, T, S/T, C]
    flatten(1, 2) -> [B, S, C] (frames back into tokens); [B*T, S/T, H, D] flatten(2, 3)
    merges axes that are not the frames'."""
    s = p.ax(node.args[0])
    ndim = p.ndim(node, node.args[0])
    start = normal_dim(arg(node, 1, "start_dim", 0), ndim)
    end = normal_dim(arg(node, 2, "end_dim", -1), ndim)
    if isinstance(s, FrameGroups) and (start, end) == (0, 1) and s.dim == 1:
        batch = p.tensor(node, node.args[0]).shape[0]
        return FrameRows(1, s.layout, s.frames, batch)
    if isinstance(s, FrameGroups) and (start, end) == (s.dim, s.dim + 1):
        return TokenAxis(s.dim, s.layout)
    if isinstance(s, FrameRows) and start > s.dim:
        return s
    if isinstance(s, FrameRows) and end < s.dim and start > 0:
        return FrameRows(s.dim - (end - start), s.layout, s.frames, s.batch)
    p.fail(node, f"flatten({start}, {end}) of image tokens split into {s.frames} frames merges "
           "a frame axis with another")


def unfold_frames(p: Propagation, node: fx.Node, name: str):
    """[B*T, S/T, C] unflatten(0, (B, T)) -> [B, T, S/T, C]: sizes (B, n) once rewritten;
    an unflatten of frame groups runs on the token grid."""
    s = p.ax(node.args[0])
    if not isinstance(s, FrameRows):
        return p.on_grid(node, name)
    d = normal_dim(arg(node, 1, "dim"), p.ndim(node, node.args[0]))
    shape = tuple(p.tensor(node, node).shape)
    if d != 0 or s.dim != 1 or shape[:2] != (s.batch, s.frames):
        p.fail(node, f"unflatten of frame rows into {shape[:2]} is not (batch {s.batch}, "
               f"frames {s.frames}) in front of the tokens of a frame")
    p.plan.literals.append(GroupCount(node, 1, s.layout))
    return FrameGroups(1, s.layout, s.frames)


def frame_attention(p: Propagation, node: fx.Node, name: str) -> FrameRows:
    """sdpa(q [B*T, H, S/T, D], k, v [B*T, H, L, D]): each frame's queries attend to that
    frame's keys, which hold no image token (WanAnimate: face features per frame). Exact
    for any subset: every query row reads only its own frame's keys, so those are gathered
    per query token by its frame (`FrameKeys`): q [B*n, H, 1, D], k, v [B*n, H, L, D]."""
    args = attention_args(node)
    q, k, v, mask = args["query"], args["key"], args["value"], args.get("attn_mask")
    rows = p.ax(q)
    if not isinstance(rows, FrameRows):
        p.fail(node, "keys or values hold image tokens split into frames, the queries do not")
    if p.ax(k) is not None or p.ax(v) is not None:
        p.fail(node, "attention within frames whose keys hold image tokens: a gathered token "
               "reads the keys of its whole frame, and no per-layer cache completes frames")
    if args.get("is_causal") or isinstance(mask, fx.Node):
        p.fail(node, "attention within frames with a mask or causal")
    if rows.dim != p.ndim(node, q) - 2:
        p.fail(node, "the tokens of a frame are not the sequence axis of attention")
    group_size = rows.layout.full_length // rows.frames
    for kv in dict.fromkeys((k, v)):
        if p.tensor(node, kv).shape[0] != rows.batch * rows.frames:
            p.fail(node, f"keys {kv.name} have no row per frame ({rows.batch} x {rows.frames})")
        p.plan.frame_keys.append(FrameKeys(node, kv, rows.layout, rows.frames, rows.batch, group_size))
    return rows
