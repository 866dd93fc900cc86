"""permutation: the axis order of a transpose, swapaxes, permute or movedim call, read by
the rules for a token axis, for frames and for the token grid alike."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.fx as fx

from ..nodes import arg, normal_dim

if TYPE_CHECKING:
    from ..token_propagation import Propagation


def permutation(p: Propagation, node: fx.Node, name: str) -> list[int]:
    """The axis order of `node` (transpose, swapaxes, permute, movedim): output axis i is
    input axis order[i]."""
    ndim = p.ndim(node, node.args[0])
    if name in ("transpose", "swapaxes"):
        dims = [arg(node, 1, "dim0"), arg(node, 2, "dim1")]
    elif name == "permute":
        dims = node.kwargs.get("dims", node.args[1:])
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
    else:  # movedim(source, destination)
        dims = [arg(node, 1, "source"), arg(node, 2, "destination")]
    if not all(isinstance(d, int) for d in dims):
        p.fail(node, f"{name} with dims {list(dims)!r} (ints are needed)")
    dims = [normal_dim(d, ndim) for d in dims]
    if name in ("transpose", "swapaxes"):
        order = list(range(ndim))
        order[dims[0]], order[dims[1]] = order[dims[1]], order[dims[0]]
    elif name == "permute":
        order = dims
    else:
        order = [d for d in range(ndim) if d != dims[0]]
        order.insert(dims[1], dims[0])
    if sorted(order) != list(range(ndim)):
        p.fail(node, f"{name} with dims {order} is not a permutation of {ndim} dims")
    return order
