"""Lowering of a graph: Inductor, or eager FX for tests and debugging.

A graph left as it is (`lower_unrewritten`) is lowered inside the backend call, the way
plain Inductor does: with dynamo's own example inputs, so symbolic sizes (dynamic=True, or
a second shape under dynamic=None) stay symbolic.

A rewritten graph (`LoweredRewrite`) is compiled lazily at its first call, with
`active_index` a fake tensor of symbolic length, so one compiled graph serves every
active-token count (1 .. N). Not inside the backend call: there dynamo's tracing context
would fix the length. An empty `active_index` runs the rewritten graph eagerly instead:
Inductor's CPU flash-attention kernel divides by the query length (SIGFPE at 0 queries),
while eager F.scaled_dot_product_attention handles it. Only text tokens (if any) are
computed then.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch.fx as fx

from jano_compile.passes.signature import GraphSignature

from .fake_inputs import fake_inputs
from .options import Options

log = logging.getLogger(__name__)


class LoweredUnrewritten:
    """A graph the passes left as it is, lowered at once with dynamo's example inputs."""

    def __init__(self, gm: fx.GraphModule, options: Options, example_inputs):
        if options.lowering == "eager":
            self._fn: Callable = gm.forward
        else:
            from torch._inductor.compile_fx import compile_fx
            log.info("jano: compiling an unrewritten graph with Inductor")
            self._fn = compile_fx(gm, list(example_inputs), config_patches=options.inductor_patches())
        self.compiles = 1

    def __call__(self, *args):
        return self._fn(*args)


class LoweredRewrite:
    """Callable running a rewritten graph (or one of its variants: the skip tail, the dense
    full step); `compiles` counts its lowerings (at most one). `num_active`: the one index
    length it is called with (static for Inductor), or None for any (symbolic)."""

    def __init__(self, gm: fx.GraphModule, options: Options, signature: GraphSignature,
                 num_active: Optional[int] = None):
        self.gm = gm
        self.options = options
        self.signature = signature
        self.num_active = num_active
        self.compiles = 0
        self.compile_seconds = 0.0
        self._fn: Optional[Callable] = None

    def _lower(self, args) -> Callable:
        self.compiles += 1
        if self.options.lowering == "eager":
            return self.gm
        from torch._inductor.compile_fx import compile_fx
        start = time.perf_counter()
        _, example = fake_inputs(self.signature, args[:self.signature.index_position], self.num_active)
        log.info("jano: compiling the rewritten graph with Inductor (%s active tokens)",
                 "any number of" if self.num_active is None else self.num_active)
        # CUDA graphs of rewritten graphs are captured by the runner (static_call.py), not
        # by Inductor's cudagraph trees
        patches = {**self.options.inductor_patches(), "triton.cudagraphs": False}
        # not a graph as dynamo captured it (inputs added, copies lose dynamo's per-node
        # sources): without the mark, AOTAutograd does not look for those sources
        self.gm.meta.pop("dynamo_compile_id", None)
        fn = compile_fx(self.gm, example, config_patches=patches)
        self.compile_seconds += time.perf_counter() - start
        return fn

    def __call__(self, *args):
        index = args[self.signature.index_position]
        if index.numel() == 0:
            return self.gm(*args)
        if self.num_active is not None and index.numel() != self.num_active:
            raise ValueError(f"this graph was lowered for {self.num_active} active tokens, "
                             f"got {index.numel()}")
        if self._fn is None:
            self._fn = self._lower(args)
        return self._fn(*args)
