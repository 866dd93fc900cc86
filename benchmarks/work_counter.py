"""Counts the arithmetic a model really does: the FLOPs of its matrix products and attention,
seen at the ATen level, so every caching method is measured by the same rule.

    with WorkCounter() as work:
        model(...)
    work.flops   # 2 * M * K * N per matrix product, 4 * B * H * Lq * Lk * D per attention

It counts inside torch.compile'd code only where that code runs ATen ops one by one (an
eager-lowered jano graph, an eager model): Inductor's kernels are invisible to it.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}


def _matmul_flops(func, args) -> int:
    a, b = (args[1], args[2]) if func in (aten.addmm.default, aten.baddbmm.default) else (args[0], args[1])
    batch = a.shape[0] if a.dim() == 3 else 1
    return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _attention_flops(args) -> int:
    q, k = args[0], args[1]            # [B, H, Lq, D], [B, H, Lk, D]
    return 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]


class WorkCounter(TorchDispatchMode):
    """Adds up matrix-product and attention FLOPs of the ops run while it is active."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # let dynamo run its cached graphs under this mode (it would run the model eagerly
        # instead); the counter then sees what those graphs execute
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _MATMULS:
            self.flops += _matmul_flops(func, args)
        elif "scaled_dot_product" in func.__name__ and "backward" not in func.__name__:
            self.flops += _attention_flops(args)
        return func(*args, **(kwargs or {}))
