"""Manual index policy: the user picks the active tokens (`set_active`) and asks for full
steps (`refresh`); every call before the first `set_active` is a full step.

Where lengths are static (static shapes, CUDA graphs) a set runs at its exact length when
that length was set before or is among the first MAX_EXACT_LENGTHS lengths set: a set the
user keeps step after step costs no padding and one graph or capture. Sets of ever new
sizes (a policy of the user's own) are padded to buckets from then on, so that they compile
or capture a bounded number of lengths."""
from __future__ import annotations

from typing import Optional

import torch

from .policy import CallPlan

MAX_EXACT_LENGTHS = 2   # set lengths that run unpadded; later new lengths are padded to buckets
MAX_RECENT_SETS = 4     # sets remembered, so that one set again is the same tensor (its device copy)


def checked_index(index, num_image_tokens: int) -> torch.Tensor:
    """`index` as a sorted int64 CPU tensor [n] of distinct positions in [0, N), or an
    error that says what to pass instead."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"set_active() takes a LongTensor of image-token positions, got "
                        f"{type(index).__name__}")
    # uint8 too: torch indexes with a uint8 tensor as a mask, and a 0/1 mask is easily passed
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype in (torch.bool, torch.uint8):
        raise TypeError(f"set_active() takes integer token positions (int64 or int32), got a {index.dtype} "
                        "tensor (for a mask use mask.nonzero().flatten())")
    if index.dim() != 1:
        raise ValueError(f"set_active() takes a 1-D index, got shape {tuple(index.shape)}")
    if index.device.type == "meta":
        raise ValueError("set_active() got an index on the meta device, which holds no values; "
                         "pass positions on the CPU or the model's device")
    n = num_image_tokens
    index = index.detach().to("cpu", torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise IndexError(f"set_active(): positions must lie in [0, {n}) (the model has {n} "
                         f"image tokens at the resolution of its last full step; for another "
                         f"resolution call the model once at it first); got min {int(index.min())}, "
                         f"max {int(index.max())}")
    index = torch.sort(index).values
    if index.numel() > 1 and bool((index[1:] == index[:-1]).any()):
        hint = " (a 0/1 mask? pass mask.nonzero().flatten())" if int(index.max()) <= 1 else ""
        raise ValueError(f"set_active(): the index holds duplicate positions{hint}")
    return index


class ManualPolicy:
    """Which tokens the next call recomputes, as the user set it."""

    def __init__(self):
        self.engaged = False            # set_active() or refresh() was called
        self.active: Optional[torch.Tensor] = None
        self.exact = False              # `active` runs at its exact length (static lengths)
        self.refresh_next = False
        self._exact_lengths: set[int] = set()
        self._recent: list[torch.Tensor] = []     # the last sets, most recent first

    def refresh(self) -> None:
        self.engaged = True
        self.refresh_next = True

    def set_active(self, index, num_image_tokens: int) -> None:
        index = checked_index(index, num_image_tokens)
        # a set given before is that same tensor again, whose device copy the runner keeps:
        # sets used in turn (by hand, or a benchmark's settings) cost no copy per call
        same = next((t for t in self._recent if t.shape == index.shape and torch.equal(t, index)), None)
        self.active = same if same is not None else index
        self._recent = [self.active] + [t for t in self._recent if t is not self.active][:MAX_RECENT_SETS - 1]
        n = index.numel()
        never_padded = n in (0, num_image_tokens)    # no graph or a bucket of its own: no allowance spent
        self.exact = never_padded or n in self._exact_lengths or len(self._exact_lengths) < MAX_EXACT_LENGTHS
        if self.exact and not never_padded:
            self._exact_lengths.add(n)
        self.engaged = True

    def plan(self, num_image_tokens: int, branch: str) -> CallPlan:
        if self.refresh_next or self.active is None:
            return CallPlan(None, branch)
        if self.active.numel() and int(self.active[-1]) >= num_image_tokens:
            raise IndexError(f"the active index reaches past the {num_image_tokens} image tokens of "
                             "this graph (did the resolution change?); call set_active() again")
        return CallPlan(self.active, branch, exact=self.exact)

    def ran_full(self) -> None:
        self.refresh_next = False
