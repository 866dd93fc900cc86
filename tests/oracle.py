"""The oracle of the compiler core: with caches filled by a full step at input x, a gathered
step at the same x reproduces the full output for any subset of image tokens."""
from __future__ import annotations

import torch

import jano_compile

from .models import FAMILIES, cast

TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
             torch.float16: dict(atol=1e-2, rtol=1e-2)}


def build(family: str, batch: int, dtype, **size):
    model, kwargs, n = FAMILIES[family].build(b=batch, **size)
    return model.to(dtype).eval(), cast(kwargs, dtype), n


def check_oracle(family: str, batch: int, dtype, subsets, lowering="eager", options=None, **size):
    """Runs the oracle; returns the controller for further checks. `subsets` are lists of
    image-token positions or callables n -> positions; `options`: more backend options."""
    torch._dynamo.reset()  # hypothesis runs many examples inside one test
    model, kwargs, n = build(family, batch, dtype, **size)
    tol = TOLERANCE[dtype]
    with torch.no_grad():
        reference = model(**kwargs, return_dict=False)[0]
        compiled = torch.compile(model, backend="jano", options={"lowering": lowering, **(options or {})})
        ctl = jano_compile.controller(compiled)
        full = compiled(**kwargs, return_dict=False)[0]
        stats = ctl.stats()
        assert stats["rewritten"], stats["fallback_reason"]
        torch.testing.assert_close(full, reference, **tol, msg=lambda m: f"full step vs eager: {m}")
        for subset in subsets:
            positions = subset(n) if callable(subset) else subset
            ctl.set_active(torch.tensor(positions, dtype=torch.long))
            part = compiled(**kwargs, return_dict=False)[0]
            assert part.shape == full.shape
            torch.testing.assert_close(part.float(), full.float(), **tol,
                                       msg=lambda m: f"|S|={len(positions)}: {m}")
    return ctl, n
