"""Lowering of a (rewritten) graph: Inductor, or eager FX for tests and debugging.

A rewritten graph is compiled lazily at its first call, with `active_index` a fake tensor
of symbolic length, so one compiled graph serves every active-token count (1 .. N). Not
inside the backend call: there dynamo's tracing context would fix the length.

An empty `active_index` runs the rewritten graph eagerly instead: Inductor's CPU flash
attention kernel divides by the query length (SIGFPE at 0 queries), while eager
F.scaled_dot_product_attention handles it. Only text tokens (if any) are computed then.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch.fx as fx

from .fake_inputs import extra_inputs, fake_inputs
from .options import Options

log = logging.getLogger(__name__)


class Lowered:
    """Callable running `gm`; `compiles` counts the lowerings it made (at most one)."""

    def __init__(self, gm: fx.GraphModule, options: Options, num_image_tokens: int | None):
        """`num_image_tokens`: N of a rewritten graph (its `active_index` has 0..N entries);
        None for a graph left as it is."""
        self.gm = gm
        self.options = options
        self.num_image_tokens = num_image_tokens
        self.compiles = 0
        self._fn: Callable | None = None
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self._index_position = (len(placeholders) - len(extra_inputs(gm))) if self.symbolic_index else None

    @property
    def symbolic_index(self) -> bool:
        """A rewritten graph: its active_index gets a symbolic length under Inductor."""
        return self.num_image_tokens is not None

    def _lower(self, args) -> Callable:
        if self.options.lowering == "eager":
            self.compiles += 1
            return self.gm
        from torch._inductor.compile_fx import compile_fx
        if self.symbolic_index:
            _, example = fake_inputs(self.gm, args[:self._index_position], None, self.num_image_tokens)
        else:
            example = list(args)
        log.info("jano: compiling %s with Inductor", "rewritten graph" if self.symbolic_index else "graph")
        fn = compile_fx(self.gm, example, config_patches=self.options.inductor_patches())
        self.compiles += 1
        return fn

    def __call__(self, *args):
        if self._index_position is not None and args[self._index_position].numel() == 0:
            return self.gm(*args)
        if self._fn is None:
            self._fn = self._lower(args)
        return self._fn(*args)
