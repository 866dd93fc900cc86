"""Lowering of a (rewritten) graph: Inductor, or eager FX for tests and debugging.

A rewritten graph is compiled lazily at its first call, with `active_index` a fake tensor
of symbolic length, so one compiled graph serves every active-token count (0 .. N). Not
inside the backend call: there dynamo's tracing context would fix the length.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch.fx as fx

from .fake_inputs import fake_inputs
from .options import Options

log = logging.getLogger(__name__)


def _call(fn, args):
    return fn(list(args)) if getattr(fn, "_boxed_call", False) else fn(*args)


class Lowered:
    """Callable running `gm`; `compiles` counts the lowerings it made (at most one)."""

    def __init__(self, gm: fx.GraphModule, options: Options, symbolic_index: bool):
        self.gm = gm
        self.options = options
        self.symbolic_index = symbolic_index
        self.compiles = 0
        self._fn: Callable | None = None

    def _lower(self, args) -> Callable:
        if self.options.lowering == "eager":
            self.compiles += 1
            return self.gm
        from torch._inductor.compile_fx import compile_fx
        if self.symbolic_index:
            _, example = fake_inputs(self.gm, args[:len(args) - _num_extra(self.gm)], None)
        else:
            example = list(args)
        log.info("jano: compiling %s with Inductor", "rewritten graph" if self.symbolic_index else "graph")
        fn = compile_fx(self.gm, example, config_patches=self.options.inductor_patches())
        self.compiles += 1
        return fn

    def __call__(self, *args):
        if self._fn is None:
            self._fn = self._lower(args)
        return _call(self._fn, args)


def _num_extra(gm: fx.GraphModule) -> int:
    from .fake_inputs import extra_inputs
    return len(extra_inputs(gm))
