"""One rewritten graph, ready to run: user inputs + an index + a branch's states in, user
outputs out, the states renewed. The calling convention comes from the graph's signature."""
from __future__ import annotations

from typing import Optional

import torch

from jano_compile.passes.signature import GraphSignature

from .cache_store import BranchState
from .lowering import LoweredRewrite

MAX_DEVICE_INDICES = 8     # device copies of CPU index tensors kept (medium, active, ...)


class GraphRunner:
    """Runs a lowered rewritten graph; keeps the index on the graph's device."""

    def __init__(self, signature: GraphSignature, lowered: LoweredRewrite):
        self.signature = signature
        self.lowered = lowered
        self._full_index: Optional[torch.Tensor] = None
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # id -> (cpu, device)

    @property
    def compiles(self) -> int:
        return self.lowered.compiles

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

    def __call__(self, args, index: torch.Tensor, state: BranchState, full: bool) -> tuple:
        """One call; `index` already on the device (see `device_index`)."""
        sig = self.signature
        outputs = self.lowered(*sig.call_args(args, index, state.tensors))
        user, renewed = sig.split_outputs(outputs)
        state.renew(renewed, full)
        return user
