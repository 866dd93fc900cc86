"""Token rules for scaled_dot_product_attention over a token axis: each call is classified
by what its queries and keys hold (plan.AttentionSite) and recorded for the K/V caches.

    sdpa(q [B, H, T+N, D], k [B, H, T+N, D], v)    SELF: the keys of every token come from
                                                    a per-layer cache of K and V
    sdpa(q [B, H, N, D], k [B, H, L, D], v)        CROSS (keys hold no image token)
    sdpa(q [B, H, A, D], k [B, H, N, D], v)        TO_IMAGE (queries hold none: LTX-2's audio)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.fx as fx

from ..nodes import attention_args
from ..plan import CROSS, SELF, TO_IMAGE, AttentionSite, TableGather, TokenAxis

if TYPE_CHECKING:
    from ..token_propagation import Propagation


def attention(p: Propagation, node: fx.Node, name: str):
    """scaled_dot_product_attention, classified by what its queries and keys hold (see
    plan.AttentionSite): SELF and CROSS return the query's token axis; TO_IMAGE (queries
    without image tokens attending to image keys) returns None: the softmax runs over
    the completed keys, so every output row is computed in full."""
    args = attention_args(node)
    q, k, v, mask = args["query"], args["key"], args["value"], args.get("attn_mask")
    if args.get("is_causal"):
        p.fail(node, "causal attention over image tokens")
    if isinstance(mask, fx.Node) and p.ax(mask) is not None:
        p.fail(node, "attention mask computed from image tokens")
    key = key_axis(p, node, k, v)
    if p.ax(q) is None:
        if key is None:
            p.stray_tokens(node, "its query, key or value")
        p.plan.attention.append(AttentionSite(node, TO_IMAGE, None, key, k, v))
        return None
    query = p.token_axis(node, q)
    if query.dim != p.ndim(node, q) - 2:
        p.fail(node, "query token axis is not the sequence axis of attention")
    gather_mask_rows(p, node, mask, query)
    p.plan.attention.append(AttentionSite(node, CROSS if key is None else SELF, query, key, k, v))
    return query


def key_axis(p: Propagation, node: fx.Node, k, v):
    """The token axis keys and values share (k, v [B, H, S, D] with image tokens on S), or
    None when neither holds image tokens. Image tokens elsewhere (on a batch or feature
    axis of attention, or in only one of the two) fail: no per-layer cache of rows along
    S would complete them."""
    tk, tv = p.ax(k), p.ax(v)
    if tk is None and tv is None:
        return None
    if not isinstance(tk, TokenAxis) or tk != tv:
        p.fail(node, "keys and values do not share one token axis")
    if tk.dim != p.ndim(node, k) - 2:
        p.fail(node, f"keys hold image tokens on axis {tk.dim}, not on the sequence axis of "
               "attention")
    return tk


def gather_mask_rows(p: Propagation, node: fx.Node, mask, query: TokenAxis):
    """A mask [.., L, S] whose rows run over the queries' tokens is gathered with them;
    its key axis stays at full length (the keys are completed)."""
    if not isinstance(mask, fx.Node):
        return
    mv = p.tensor(node, mask)
    full = query.layout.full_length
    if mv.dim() >= 2 and mv.shape[-2] == full and full != 1:
        p.plan.tables.append(TableGather(node, mask, mv.dim() - 2, query.layout))
