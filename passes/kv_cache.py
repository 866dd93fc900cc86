"""kv_cache: an attention whose keys hold image tokens (self/joint attention, and attention
of another stream's queries to the image: TO_IMAGE) reads every image token: keys and
values of the gathered tokens are written into the layer's cache of the full sequence (in
place), and attention reads the whole cache. Cross-attention to text is left as it is.

    before                                      after (layer i, joint [text 7 | image 64])
    q, k, v                  [B, H, 71, D]      q, k, v                        [B, H, 7 + n, D]
                                                k_all = index_copy_(k_cache_i, 2, rows, k)  [B, H, 71, D]
                                                v_all = index_copy_(v_cache_i, 2, rows, v)  (in place)
    o = sdpa(q, k, v)        [B, H, 71, D]      o = sdpa(q, k_all, v_all)      [B, H, 7 + n, D]

    TO_IMAGE (LTX-2: audio queries, video keys [image 48]): only the keys change
    a = sdpa(q_audio, k, v)  [B, H, 9, D]       a = sdpa(q_audio, k_all, v_all)  [B, H, 9, D]

Keys and values that are one tensor (`sdpa(q, q, q)`) share one cache; the query argument
is never replaced, even where it is the same tensor as the keys.
"""
from __future__ import annotations

import torch.fx as fx

from .nodes import rename, value
from .plan import AttentionSite, TokenPlan
from .signature import Role, declare_state, write_state
from .token_inputs import layout_rows

_KEY_VALUE_ARGS = (("key", 1), ("value", 2))   # (keyword, position) in scaled_dot_product_attention


def kv_cache(gm: fx.GraphModule, plan: TokenPlan) -> fx.GraphModule:
    graph = gm.graph
    sites = [site for site in plan.attention if site.completes_keys]
    for layer, site in enumerate(sites):
        _complete_keys(graph, site, layer)
    return gm


def _complete_keys(graph: fx.Graph, site: AttentionSite, layer: int) -> None:
    """Write the fresh key/value rows of `site` into layer `layer`'s caches and let the
    attention read the completed caches instead."""
    rows = layout_rows(graph, site.key.layout)
    completed = {}
    for role, src in ((Role.K_CACHE, site.key_node), (Role.V_CACHE, site.value_node)):
        if src in completed:
            continue
        cache = declare_state(graph, f"{role.value}_{layer}", role, value(src),
                              token_dim=site.key.dim, layer=layer)
        with graph.inserting_before(site.node):
            full = write_state(graph, cache, site.key.dim, rows, src)
        rename(full, f"{role.value}_{layer}_filled")
        completed[src] = full
    _replace_key_value(site.node, completed)


def _replace_key_value(node: fx.Node, completed: dict) -> None:
    """Replace the key and value arguments of the attention `node` (positional or keyword)
    by their completed caches; the other arguments, the query included, stay."""
    args, kwargs = list(node.args), dict(node.kwargs)
    for name, pos in _KEY_VALUE_ARGS:
        if pos < len(args):
            args[pos] = completed.get(args[pos], args[pos])
        elif name in kwargs:
            kwargs[name] = completed.get(kwargs[name], kwargs[name])
    node.args, node.kwargs = tuple(args), kwargs
