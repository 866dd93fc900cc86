"""Calls through static input buffers, replayed as CUDA graphs.

A `StaticCall` runs one callable (a lowered graph variant, for one index length and one
branch's states) always on the same argument addresses: the arguments that do not change
between steps (parameters, the runtime's states, its step-time buffer) are used as they
are; the others (activations, the index) are copied into buffers it owns. On CUDA the call
is captured once as a `torch.cuda.CUDAGraph` and each later step replays it: one launch
for the whole step, no host work per kernel. Outputs are copied out, so a replay (the
other CFG branch, the next step) never overwrites what the caller holds.

Why our own capture rather than Inductor's cudagraph trees: a rewritten graph is lowered
outside dynamo's tracing context, so Inductor does not know which inputs are parameters and
would copy every weight into its pool on each replay; the states are mutated inputs, which
make the trees skip the graph; and split CFG calls one graph twice per step, which the
trees' generation heuristics take for an overwritten output. Here the static inputs are
known exactly (the runtime owns them), one capture exists per (variant, length, branch),
and all captures of a runner share one memory pool (safe: replays run one at a time and
their outputs are copied out at once).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch

log = logging.getLogger(__name__)

# the check cudagraph trees make of their static inputs, in C++ (CUDA builds of torch)
_pointers_equal = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)


class StaticCall:
    """`fn` called on fixed addresses. `static`: positions of the arguments whose storage
    is the same at every call (checked: a moved one is a new capture); the others are
    copied into owned buffers of the first call's shapes. `capture`: record a CUDA graph
    (CUDA only); without it the buffers are still used, so the CPU runs the same path."""

    def __init__(self, fn: Callable, args: Sequence, static: frozenset, capture: bool,
                 pool=None):
        self.fn = fn
        self.capture = capture
        self.pool = pool
        self._static = [i for i in sorted(static) if isinstance(args[i], torch.Tensor)]
        self._static_pointers = [args[i].data_ptr() for i in self._static]
        self._pointers_by_position = [None] * len(args)    # the C++ check's layout
        for i, pointer in zip(self._static, self._static_pointers):
            self._pointers_by_position[i] = pointer
        fixed = set(self._static)
        with torch.inference_mode(False):   # normal tensors: later calls outside inference mode copy into them
            self._buffers = {i: a.clone() for i, a in enumerate(args)
                             if i not in fixed and isinstance(a, torch.Tensor)}
        self._args = [self._buffers.get(i, a) for i, a in enumerate(args)]
        self._constants = [(i, a) for i, a in enumerate(args) if not isinstance(a, torch.Tensor)]
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._outputs: Optional[tuple] = None
        self.failure: Optional[str] = None    # why the capture failed (it then runs uncaptured)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def matches(self, args: Sequence) -> bool:
        """True when `args` fit this call: same static addresses, same buffer shapes, same
        non-tensor values."""
        if _pointers_equal is not None:
            if not _pointers_equal(list(args), self._pointers_by_position, self._static):
                return False
        elif [args[i].data_ptr() for i in self._static] != self._static_pointers:
            return False
        if any(args[i] != value for i, value in self._constants):
            return False
        return all(args[i].shape == b.shape and args[i].dtype == b.dtype for i, b in self._buffers.items())

    def __call__(self, args: Sequence) -> tuple:
        for i, buffer in self._buffers.items():
            buffer.copy_(args[i], non_blocking=True)
        if not self.capture:
            return tuple(self.fn(*self._args))
        if self._graph is None:
            return self._record()
        self._graph.replay()
        return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in self._outputs)

    def _record(self) -> tuple:
        """The first call: run once for real on a side stream (Inductor compiles and
        autotunes there, lazy CUDA state is initialised), then capture (capture runs no
        kernel: the states are written once, by the real run)."""
        main = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            outputs = tuple(self.fn(*self._args))
        main.wait_stream(side)
        for o in outputs:
            if isinstance(o, torch.Tensor):
                o.record_stream(main)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                captured = tuple(self.fn(*self._args))
        except Exception as e:  # noqa: BLE001 - reported; the call runs uncaptured from now on
            self.capture = False
            self.failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("jano: CUDA graph capture failed, the call runs without: %s", self.failure)
            return outputs
        self._graph, self._outputs = graph, captured
        return outputs
