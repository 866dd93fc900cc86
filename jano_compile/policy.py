"""What an index policy hands the controller for one call of a rewritten graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

DEFAULT_BRANCH = "default"


def branch_of_call(call_in_step: int) -> str:
    """The branch of the `call_in_step`-th call of a step (split CFG without named branches)."""
    return DEFAULT_BRANCH if call_in_step == 0 else f"call{call_in_step}"


def branch_of_tick(tick, name: Optional[str]) -> str:
    """The branch of a call at clock `tick` (clock.Tick): its name (cache_context, ctl.branch)
    or place among the step's calls, and for a scheduler's further evaluation at the step's
    time (Heun) that evaluation's number: each keeps caches and a forecast history of its own."""
    branch = name or branch_of_call(tick.call_in_step)
    return branch if tick.evaluation == 0 else f"{branch}@{tick.evaluation}"


@dataclass(frozen=True)
class CallPlan:
    """One call: recompute the image tokens at `index` (sorted int64 [n] on the CPU), or
    every token when `index` is None; the caches of `branch` are read and written. `skip`:
    no image token is due, so the skip tail may run instead of the model."""
    index: Optional[torch.Tensor]
    branch: str = DEFAULT_BRANCH
    step: Optional[int] = None        # automatic schedule only
    phase: Optional[str] = None       # warmup, refresh, medium, ...; "manual" after set_active,
                                      # "off" where the schedule turned off (enable())
    new_generation: bool = False      # automatic schedule only: the first call of a generation
    time: Optional[float] = None      # forecast time of the step (None: the step index, or
                                      # under manual control the branch's call count)
    exact: bool = False               # `index` is one of a few fixed sets (the schedule's
                                      # regions, a set the user keeps): worth a static graph
                                      # or capture of its own length, not a padded bucket

    @property
    def skip(self) -> bool:
        return self.index is not None and self.index.numel() == 0 and self.step is not None
