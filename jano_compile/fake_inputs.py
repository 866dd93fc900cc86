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


def symbolic_hint(num_image_tokens: int, taken: set[int]) -> int:
    """The example length for a symbolic active count: a typical one (about N/2) that equals
    no size of the graph's inputs. A hint equal to, say, the batch size lets some torch
    versions (2.11) specialise the count to that size when an op compares the two."""
    half = num_image_tokens // 2
    candidates = [*range(half + 1, num_image_tokens), *range(half, 1, -1)]
    return next((h for h in candidates if h not in taken), max(2, half + 1))


def fake_inputs(gm: fx.GraphModule, example_inputs, num_active=None, num_image_tokens=None):
    """(mode, inputs): fakes of `example_inputs` plus the added inputs. `num_active` None
    makes the active_index length symbolic, in [2, num_image_tokens] (one Inductor compile
    serves every length; the upper bound lets Inductor index with 32-bit integers)."""
    if num_active is None and num_image_tokens is None:
        raise ValueError("a symbolic active count needs num_image_tokens, its upper bound")
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=False)
    fakes = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs]
    for node in extra_inputs(gm):
        ex = node.meta["example_value"]
        if node.meta[ROLE] == "active_index":
            if num_active is not None:
                fakes.append(mode.from_tensor(torch.zeros(num_active, dtype=torch.long, device=ex.device)))
                continue
            taken = {int(d) for t in example_inputs if isinstance(t, torch.Tensor) for d in t.shape}
            real = torch.zeros(symbolic_hint(num_image_tokens, taken), dtype=torch.long, device=ex.device)
            ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC], constraint_sizes=[None])
            fake = mode.from_tensor(real, symbolic_context=ctx)
            mode.shape_env.constrain_symbol_range(fake.shape[0].node.expr, compiler_min=2,
                                                  compiler_max=max(num_image_tokens, 2))
            fakes.append(fake)
        else:
            with mode:
                fakes.append(torch.empty(tuple(ex.shape), dtype=ex.dtype, device=ex.device))
    return mode, fakes
