"""nodes: what dynamo recorded about an FX node, and its arguments read by name whichever
way the call was written (positional or keyword)."""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
import torch.fx as fx


def value(node: Any):
    """The example value (fake tensor, tuple or int) dynamo recorded for `node`."""
    if not isinstance(node, fx.Node):
        return node
    return node.meta.get("example_value", node.meta.get("val"))


def op_name(node: fx.Node) -> str:
    """`add` for torch.add, Tensor.add and operator.add alike; a method's name for a method call."""
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def placeholders(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "placeholder"]


def output_node(graph: fx.Graph) -> fx.Node:
    return next(n for n in graph.nodes if n.op == "output")


def rename(node: fx.Node, candidate: str) -> fx.Node:
    """Name `node` `candidate` in its graph, made unique by the graph's namespace (a model's
    own node may hold that name: `candidate_1` then). A plain `node.name = ...` would leave
    two nodes of one name, which `graph.lint()` refuses."""
    node._rename(candidate)     # FX's own renaming (torch.fx.Node), kept by the namespace
    return node


def is_tensor_node(a: Any) -> bool:
    return isinstance(a, fx.Node) and isinstance(value(a), torch.Tensor)


def ancestors(node: fx.Node) -> set:
    """`node` and every node it is computed from."""
    seen, todo = {node}, [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def arg(node: fx.Node, pos: int, name: str, default=None):
    """Argument `name` of the call, given at position `pos` or by keyword."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def normal_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def shape_args(node: fx.Node) -> list:
    """The target shape of view/reshape/expand as a flat list, whichever call form."""
    return shape_args_and_form(node)[0]


def shape_args_and_form(node: fx.Node) -> tuple[list, tuple]:
    """(the target shape of view/reshape/expand as a list, how the call spells it): a
    keyword (`shape=` or `size=`), one tuple, or one argument per size."""
    for key in ("shape", "size"):
        if key in node.kwargs:
            return list(node.kwargs[key]), ("kw", key)
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return list(rest[0]), ("tuple", None)
    return list(rest), ("varargs", None)


def set_shape_args(node: fx.Node, shape: list, form: tuple) -> None:
    """Write `shape` back into the call, spelled as `form` (from `shape_args_and_form`)."""
    kind, key = form
    if kind == "kw":
        node.kwargs = {**node.kwargs, key: tuple(shape)}
    elif kind == "tuple":
        node.args = (node.args[0], tuple(shape)) + tuple(node.args[2:])
    else:
        node.args = (node.args[0], *shape)


def attention_args(node: fx.Node) -> dict:
    """The arguments of a scaled_dot_product_attention call by name, whichever call form."""
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args


def written(node: fx.Node) -> Optional[fx.Node]:
    """The node whose tensor `node` writes into in place, or None: `t[...] = x`, in-place
    methods and functions (`t.add_(u)`, `torch.relu_(t)`), `out=t`, `inplace=True`. FX counts
    none of these but the first as a side effect: an unused `t.copy_(x)` is dead to it."""
    if node.op not in ("call_method", "call_function"):
        return None
    target = node.kwargs.get("out")
    if target is None and (node.target is operator.setitem or node.kwargs.get("inplace") is True):
        target = node.args[0] if node.args else None
    if target is None:
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if isinstance(name, str) and name.endswith("_") and not name.endswith("__") and node.args:
            target = node.args[0]
    return target if isinstance(target, fx.Node) else None
