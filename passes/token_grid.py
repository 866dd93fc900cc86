"""token_grid: the algebra of `TokenGrid` labels (image tokens unflattened into their latent
grid), shared by the token analysis (which follows them through layout ops) and the
token_mixing pass (which moves grid tensors to and from a cache of all tokens).

A TokenGrid lists, per tensor axis, the factors the axis holds (grid axes and other axes,
outermost first). Layout ops only regroup or reorder factors:

    [B, N, C]  unflatten(1, (H, W))          ((), (H,), (W,), (C,))        grid (H, W)
    permute(0, 3, 1, 2)  [B, C, H, W]        ((), (C,), (H,), (W,))
    flatten(2, 3)        [B, C, N]           ((), (C,), (H, W))            -> token axis 2
    view(B*F, H, W, C) of [B, F, H, W, C]    ((B, F), (H,), (W,), (C,))    (B > 1)

The canonical form of a grid tensor is [other factors..., tokens] (other factors in their
order, tokens row-major over the grid): caches of grid tensors are kept in it.
"""
from __future__ import annotations

import math
from typing import Optional

from .plan import GridFactor, TokenAxis, TokenGrid


def grid_of(sizes, dims_sizes, grid_dims: dict, layout) -> TokenGrid:
    """The TokenGrid of a tensor shaped `dims_sizes` whose axis d holds grid axis
    `grid_dims[d]` (axes of size 1 hold no factor); the grid `sizes` keep axes > 1 only."""
    kept = [i for i, s in enumerate(sizes) if s > 1]
    renumber = {old: new for new, old in enumerate(kept)}
    dims = []
    for d, size in enumerate(dims_sizes):
        if d in grid_dims:
            axis = grid_dims[d]
            dims.append((GridFactor(renumber[axis], size),) if axis in renumber else ())
        else:
            dims.append((GridFactor(None, size),) if size > 1 else ())
    return TokenGrid(tuple(sizes[i] for i in kept), tuple(dims), layout)


def holds_grid(factors) -> bool:
    return any(f.axis is not None for f in factors)


def grid_dims(grid: TokenGrid) -> list[int]:
    """The tensor axes that hold a grid factor."""
    return [d for d, factors in enumerate(grid.dims) if holds_grid(factors)]


def regroup(grid: TokenGrid, out_shape) -> Optional[TokenGrid]:
    """The grid after a reshape to `out_shape` (view, reshape, flatten, unflatten): each
    output axis takes the next factors whose sizes multiply to its size. Other factors may
    be split (channels into heads); grid factors may not. None where the reshape cuts a
    grid factor."""
    todo = [f for factors in grid.dims for f in factors]
    dims = []
    for size in out_shape:
        taken, need = [], size
        while need > 1:
            if not todo:
                return None
            f = todo.pop(0)
            if need % f.size == 0:
                taken.append(f)
                need //= f.size
            elif f.axis is None and f.size % need == 0:
                taken.append(GridFactor(None, need))
                todo.insert(0, GridFactor(None, f.size // need))
                need = 1
            else:
                return None
        dims.append(tuple(taken))
    if todo:
        return None
    return TokenGrid(grid.sizes, tuple(dims), grid.layout)


def permuted(grid: TokenGrid, order) -> TokenGrid:
    """Output axis i holds what input axis order[i] held."""
    return TokenGrid(grid.sizes, tuple(grid.dims[d] for d in order), grid.layout)


def resized(grid: TokenGrid, out_shape) -> Optional[TokenGrid]:
    """The grid of an op that keeps every axis holding grid factors and may change the
    size of the others (conv channels, chunk); None where a grid axis changes size."""
    dims = []
    for factors, size in zip(grid.dims, out_shape):
        if holds_grid(factors):
            if math.prod(f.size for f in factors) != size:
                return None
            dims.append(factors)
        else:
            dims.append((GridFactor(None, size),) if size > 1 else ())
    return TokenGrid(grid.sizes, tuple(dims), grid.layout)


def as_token_axis(grid: TokenGrid):
    """The TokenAxis where one axis holds the whole grid in order and nothing else (the
    tokens are back in sequence order), else the grid itself."""
    whole = tuple(range(len(grid.sizes)))
    for d, factors in enumerate(grid.dims):
        if tuple(f.axis for f in factors) == whole:
            return TokenAxis(d, grid.layout)
    return grid


def of_token_axis(t: TokenAxis, shape) -> TokenGrid:
    """A token axis as a grid of one axis (N tokens)."""
    return grid_of((t.layout.full_length,), tuple(shape), {t.dim: 0}, t.layout)


def canonical_order(grid: TokenGrid) -> tuple[list[GridFactor], list[int]]:
    """(every factor in axis order, the permutation that puts the other factors first, in
    their order, then the grid factors by grid axis): the canonical form's factor order."""
    factors = [f for fs in grid.dims for f in fs]
    others = [i for i, f in enumerate(factors) if f.axis is None]
    by_axis = sorted((i for i, f in enumerate(factors) if f.axis is not None), key=lambda i: factors[i].axis)
    return factors, others + by_axis


def other_sizes(grid: TokenGrid) -> list[int]:
    """The sizes of the other factors, in canonical order (the leading axes of a cache)."""
    return [f.size for fs in grid.dims for f in fs if f.axis is None]
