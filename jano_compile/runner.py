"""One rewritten graph, ready to run: user inputs + an index (+ the step time) + a branch's
states in, user outputs out, the states renewed. The calling convention comes from the
graph's signature; the skip tail (when the model has one) takes the same inputs and runs
for a step that computes no image token."""
from __future__ import annotations

from typing import Optional

import torch

from jano_compile.passes.signature import GraphSignature

from .cache_store import BranchState
from .lowering import LoweredRewrite

MAX_DEVICE_INDICES = 8     # device copies of CPU index tensors kept (medium, active, ...)


class GraphRunner:
    """Runs a lowered rewritten graph; keeps the index and the step time on its device."""

    def __init__(self, signature: GraphSignature, lowered: LoweredRewrite,
                 tail: Optional[LoweredRewrite] = None, dense: Optional[LoweredRewrite] = None):
        self.signature = signature
        self.lowered = lowered
        self.tail = tail
        self.dense = dense
        self._full_index: Optional[torch.Tensor] = None
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # id -> (cpu, device)
        self._step_time: Optional[torch.Tensor] = None

    @property
    def compiles(self) -> int:
        return sum(v.compiles for v in (self.lowered, self.tail, self.dense) if v is not None)

    def device_index(self, index: Optional[torch.Tensor]) -> torch.Tensor:
        """[n] int64 on the graph's device: `index` copied once, or every token for None."""
        device = self.signature.index_device
        if index is None:
            if self._full_index is None:
                self._full_index = torch.arange(self.signature.num_image_tokens, device=device)
            return self._full_index
        if index.device == device:
            return index
        cached = self._on_device.get(id(index))
        if cached is None or cached[0] is not index:
            if len(self._on_device) >= MAX_DEVICE_INDICES:
                self._on_device.clear()
            cached = (index, index.to(device))
            self._on_device[id(index)] = cached
        return cached[1]

    def _time(self, step_time: float) -> Optional[torch.Tensor]:
        """The step time as a [] fp32 tensor on the device (filled in place: no new buffer)."""
        if not self.signature.takes_time:
            return None
        if self._step_time is None:
            self._step_time = torch.zeros((), dtype=torch.float32, device=self.signature.index_device)
        return self._step_time.fill_(step_time)

    def _outputs(self, lowered: LoweredRewrite, args, index: torch.Tensor, state: BranchState,
                 step_time: float):
        return lowered(*self.signature.call_args(args, index, state.tensors, self._time(step_time)))

    def __call__(self, args, index: torch.Tensor, state: BranchState, full: bool,
                 step_time: float) -> tuple:
        """One call; `index` already on the device (see `device_index`)."""
        user, renewed = self.signature.split_outputs(self._outputs(self.lowered, args, index, state, step_time))
        state.renew(renewed, full, caches_filled=True if full else None)
        return user

    def dense_step(self, args, state: BranchState, step_time: float) -> tuple:
        """A full step whose K/V caches no later step reads: the dense variant, which
        leaves them as they were (stale: the next partial step is computed full)."""
        outputs = self._outputs(self.dense, args, self.device_index(None), state, step_time)
        user, renewed = self.signature.split_outputs(outputs)
        state.renew(renewed, True, caches_filled=False)
        return user

    def skip(self, args, state: BranchState, step_time: float) -> tuple:
        """A step that computes no image token: the tail's outputs; the states stay."""
        return tuple(self._outputs(self.tail, args, self.device_index(None), state, step_time))
