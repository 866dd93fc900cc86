"""Fake inputs for a rewritten graph: the original inputs as they are, `active_index` with a
given (or symbolic) length, caches at their full shapes."""
from __future__ import annotations

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import (DimDynamic, ShapeEnv,
                                                   StatelessSymbolicContext)

from jano_compile.passes.token_inputs import ROLE


def extra_inputs(gm: fx.GraphModule) -> list[fx.Node]:
    """The placeholders the passes added (active_index, then caches), in order."""
    return [n for n in gm.graph.nodes if n.op == "placeholder" and ROLE in n.meta]


def fake_inputs(gm: fx.GraphModule, example_inputs, num_active=None):
    """(mode, inputs): fakes of `example_inputs` plus the added inputs. `num_active` None
    makes the active_index length symbolic (one Inductor compile serves every length)."""
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=False)
    fakes = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs]
    for node in extra_inputs(gm):
        ex = node.meta["example_value"]
        if node.meta[ROLE] == "active_index":
            size = 2 if num_active is None else num_active   # symbolic: a hint >= 2
            real = torch.zeros(size, dtype=torch.long, device=ex.device)
            if num_active is None:
                ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC],
                                               constraint_sizes=[None])
                fakes.append(mode.from_tensor(real, symbolic_context=ctx))
            else:
                fakes.append(mode.from_tensor(real))
        else:
            with mode:
                fakes.append(torch.empty(tuple(ex.shape), dtype=ex.dtype, device=ex.device))
    return mode, fakes
