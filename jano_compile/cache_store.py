"""The caches of one model: per rewritten graph and per branch (split CFG: cond, uncond),
the state tensors its signature declares, allocated at first use. The graphs write them in
place: a state keeps its storage (and address) while its branch is in use. A branch that a
generation did not call while calling its graph (CFG turned off; a second call at the first
timestep that was a warm-up, not a CFG branch) loses its states when the next generation
starts: nothing carries over between generations, and the memory goes back. The states of
graphs a generation did not call (another resolution) stay."""
from __future__ import annotations

from dataclasses import dataclass

from jano_compile.passes.signature import GraphSignature, StateSpec


@dataclass
class BranchState:
    """The states of one graph for one branch, in signature order."""
    specs: tuple[StateSpec, ...]
    tensors: list
    computed: bool = False      # every state holds every token (a full step wrote them)
    calls: int = 0              # calls run on these states (the step time of manual control)
    time_offset: float = 0.0    # added to `calls` for that time (continues the schedule's steps)
    used: bool = False          # called in the generation under way

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def ran(self, full: bool) -> None:
        """After a call that wrote the states. `full`: it computed every token."""
        self.computed = self.computed or full
        self.calls += 1

    def reset(self) -> None:
        """States with a reset value (history times) take it: nothing before is reused."""
        for tensor, spec in zip(self.tensors, self.specs):
            if spec.reset_value is not None:
                tensor.fill_(spec.reset_value)


class CacheStore:
    """(graph key, branch) -> BranchState."""

    def __init__(self):
        self._states: dict[tuple, BranchState] = {}

    def state(self, graph_key, branch: str, signature: GraphSignature) -> BranchState:
        key = (graph_key, branch)
        if key not in self._states:
            self._states[key] = BranchState(signature.states, [s.allocate() for s in signature.states])
        state = self._states[key]
        state.used = True
        return state

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._states.values())

    def tensors_of(self, graph_key, role) -> list:
        """The state tensors with `role` of every branch of one graph."""
        return [t for (key, _), state in self._states.items() if key == graph_key
                for t, spec in zip(state.tensors, state.specs) if spec.role is role]

    def nbytes_of(self, roles: set) -> int:
        """Bytes of the states whose role is in `roles` (e.g. the forecast history)."""
        return sum(t.numel() * t.element_size() for state in self._states.values()
                   for t, spec in zip(state.tensors, state.specs) if spec.role in roles)

    def continue_time_from(self, step: float) -> None:
        """Manual control takes over from the automatic schedule: each branch's next call
        counts as `step`, so its forecast history keeps one time axis."""
        for state in self._states.values():
            state.time_offset = step - state.calls

    def clear(self) -> None:
        """Drop every state (their memory is freed once nothing else holds them)."""
        self._states.clear()

    def drop(self, graph_key) -> None:
        """Drop the states of one graph (every branch): the graph is gone."""
        for key in [k for k in self._states if k[0] == graph_key]:
            del self._states[key]

    def new_generation(self) -> list[tuple]:
        """A new generation starts: no branch forecasts across it. The states of the branches
        the last generation left idle in a graph it called are dropped; returns their
        (graph key, BranchState) pairs."""
        called = {graph_key for (graph_key, _), state in self._states.items() if state.used}
        idle = [key for key, state in self._states.items() if key[0] in called and not state.used]
        dropped = [(key[0], self._states.pop(key)) for key in idle]
        for state in self._states.values():
            state.reset()
            state.used = False
        return dropped
