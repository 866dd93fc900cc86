"""Fake inputs for a rewritten graph, from its signature: the user inputs as they are,
`active_index` with a given (or symbolic) length, every state at its full shape.

Every size but the index length is static, as dynamo hands a rewritten graph's inputs
(graphs with symbolic sizes are not rewritten): a fake made under a ShapeEnv is otherwise
symbolic in every dimension, and Inductor then generates kernels for unknown sizes
(slower, and duck-sized: equal sizes share a symbol)."""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import (DimDynamic, ShapeEnv,
                                                   StatelessSymbolicContext)

from jano_compile.passes.signature import GraphSignature


def symbolic_hint(num_image_tokens: int, taken: set[int]) -> int:
    """The example length for a symbolic active count: a typical one (about N/2) that equals
    no size of the graph's inputs. A hint equal to, say, the batch size lets some torch
    versions (2.11) specialise the count to that size when an op compares the two."""
    half = num_image_tokens // 2
    candidates = [*range(half + 1, num_image_tokens), *range(half, 1, -1)]
    return next((h for h in candidates if h not in taken), max(2, half + 1))


def fake_inputs(signature: GraphSignature, user_inputs, num_active=None):
    """(mode, inputs): fakes of `user_inputs`, the index, the step time and the states. `num_active` None
    makes the index length symbolic, in [2, N] (one Inductor compile serves every length;
    the upper bound lets Inductor index with 32-bit integers)."""
    n = signature.num_image_tokens
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=False)
    fakes = [mode.from_tensor(t, static_shapes=True) if isinstance(t, torch.Tensor) else t for t in user_inputs]
    device = signature.index_device
    if num_active is not None:
        fakes.append(mode.from_tensor(torch.zeros(num_active, dtype=torch.long, device=device), static_shapes=True))
    else:
        taken = {int(d) for t in user_inputs if isinstance(t, torch.Tensor) for d in t.shape}
        real = torch.zeros(symbolic_hint(n, taken), dtype=torch.long, device=device)
        ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC], constraint_sizes=[None])
        fake = mode.from_tensor(real, symbolic_context=ctx)
        mode.shape_env.constrain_symbol_range(fake.shape[0].node.expr, compiler_min=2,
                                              compiler_max=max(n, 2))
        fakes.append(fake)
    with mode:
        if signature.takes_time:
            fakes.append(torch.empty((), dtype=torch.float32, device=device))
        fakes += [torch.empty(s.shape, dtype=s.dtype, device=s.device) for s in signature.states]
    return mode, fakes
