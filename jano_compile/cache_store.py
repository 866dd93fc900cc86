"""The caches of one model: per rewritten graph and per branch (split CFG: cond, uncond),
the state tensors its signature declares, allocated at first use."""
from __future__ import annotations

from dataclasses import dataclass

from jano_compile.passes.signature import GraphSignature


@dataclass
class BranchState:
    """The states of one graph for one branch, in signature order."""
    tensors: list
    filled: bool = False        # a full step has written every token since allocation

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def renew(self, tensors: list, full: bool) -> None:
        """After a call: the graph's renewed states replace the old ones."""
        self.tensors = tensors
        self.filled = self.filled or full


class CacheStore:
    """(graph key, branch) -> BranchState."""

    def __init__(self):
        self._states: dict[tuple, BranchState] = {}

    def state(self, graph_key, branch: str, signature: GraphSignature) -> BranchState:
        key = (graph_key, branch)
        if key not in self._states:
            self._states[key] = BranchState([s.allocate() for s in signature.states])
        return self._states[key]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._states.values())

    def branches(self) -> list[str]:
        return sorted({branch for _, branch in self._states})
