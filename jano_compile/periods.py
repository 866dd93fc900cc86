"""Per-region refresh periods under a work budget (``JanoConfig.work``), from measured
forecast error.

Every analysis block b (``analyzer``'s spatial block of tokens) gets a period p_b from
``PERIODS``; step k after warm-up computes the blocks with ``k % p_b == 0`` and forecasts
the others. Each computed token shows how far its forecast was off per unit of time
(``passes/forecast.py``: the ``forecast_error`` state, the mean over the batch rows, so
batched CFG's conditional and unconditional rows, which share one index, count alike;
split CFG's branches each keep a state, averaged where measured before the blocks are);
``ErrorEstimate`` smooths those per block, and ``assign_periods`` picks the periods that
minimise the expected squared forecast error under the budget:

    minimise   sum_b n_b e_b^2 g(p_b)          n_b tokens of block b, e_b its error rate
    subject to sum_b n_b / p_b <= budget * N   g(p) = mean over the p steps of a cycle of
                                               j^2 at horizon j = (p - 1)(2p - 1) / 6

(an order-1 forecast's error grows about linearly with the horizon, the estimate being a
rate per unit of time). Greedy by marginal error saved per unit of work, from the longest
period down; g is convex on ``PERIODS``, so each block's marginal ratios fall and the
greedy order is the Lagrangian one. One period for all (uniform) is the case where every
block has the same error; TaylorSeer's fixed interval is one point of this space.

Measured (``benchmarks/forecast_emulation.py``, bundled model, 50 steps, W3 C1, the runtime's
schedule per seed; docs/forecast_emulation.md): against uniform aligned periods at equal token
work, +0.4..+1.6 dB mean PSNR and up to +3.4 dB worst seed at work 0.35-0.40, a tie in mean
and -2.1 dB worst at 0.55, on 1.1-1.7x as many model calls. The estimate ranks the blocks'
later forecast error at Spearman 0.52-0.58 (target 0.6). Variants of ``RegionPeriods``
(``alpha``, ``horizon_power``, ``periods``), chosen on calibration seeds, did not beat these
defaults by more than the seed noise; they stay as keyword arguments to reproduce that.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .analyzer import block_nanmean, block_token_counts, expand_blocks

#: The periods a block may get, in steps (nested: each divides the next, so the steps
#: where a longer period is due are steps where every shorter one is due too, and a
#: generation sees at most len(PERIODS) distinct index sets per assignment).
PERIODS: tuple[int, ...] = (1, 2, 4, 8)
#: Weight of a new observation in a block's estimate (exponential moving average).
EMA_ALPHA = 0.5


def cycle_error(period: int, power: float = 1.0) -> float:
    """g(p): the mean over one cycle of p steps of the squared horizon factor j^(2 power)
    (j = 0 at the computed step, error 0 there), the factor of a block's squared error in
    its expected error; power 1: (p - 1)(2p - 1) / 6."""
    return sum(j ** (2 * power) for j in range(1, period)) / period


def assign_periods(error: torch.Tensor, block_tokens: torch.Tensor, budget: float,
                   periods: Sequence[int] = PERIODS, power: float = 1.0) -> torch.Tensor:
    """Periods ``[blocks]`` long for the blocks' error rates ``error`` ``[blocks]`` (finite,
    >= 0) and token counts ``block_tokens`` ``[blocks]``, doing at most ``budget`` (a
    fraction of all tokens per step, averaged over a cycle) where that is reachable:
    ``budget >= 1`` gives every block the shortest period, a budget below the longest
    period's work gives every block the longest. ``power``: the error at horizon j is
    ``error * j ** power`` (``cycle_error``)."""
    periods = sorted(periods)
    error = error.double().flatten()
    tokens = block_tokens.double().flatten()
    if error.shape != tokens.shape:
        raise ValueError(f"error {tuple(error.shape)} and block_tokens {tuple(tokens.shape)} differ")
    if not torch.isfinite(error).all() or (error < 0).any():
        raise ValueError("block errors must be finite and >= 0")
    choice = [len(periods) - 1] * error.numel()        # index into periods, longest first
    allowed = budget * float(tokens.sum())
    work = float(tokens.sum()) / periods[-1]
    weight = (error ** 2).tolist()
    counts = tokens.tolist()
    errors = error.tolist()

    def move(block: int):
        """(-ratio, -error, block, added work) of shortening `block` one notch, or None; equal
        ratios (say squares that underflow to 0) go to the larger error first."""
        at = choice[block]
        if at == 0:
            return None
        longer, shorter = periods[at], periods[at - 1]
        added = counts[block] * (1 / shorter - 1 / longer)
        saved = counts[block] * weight[block] * (cycle_error(longer, power) - cycle_error(shorter, power))
        return (-saved / added, -errors[block], block, added)

    heap = [m for m in (move(b) for b in range(len(choice))) if m is not None]
    heapq.heapify(heap)
    while heap:
        *_, block, added = heapq.heappop(heap)
        if work + added > allowed + 1e-9:
            continue                # this block cannot afford it; smaller or cheaper moves may
        work += added
        choice[block] -= 1
        nxt = move(block)
        if nxt is not None:
            heapq.heappush(heap, nxt)
    return torch.tensor([periods[c] for c in choice], dtype=torch.long)


def due(token_periods: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted positions ``[n]`` of the tokens due at step ``k`` after warm-up
    (``k % period == 0``), from ``token_periods`` ``[tokens]``."""
    return torch.nonzero(k % token_periods == 0).flatten()


@dataclass
class ErrorEstimate:
    """The smoothed forecast error rate of each block: ``value`` ``[blocks]`` float64, NaN
    until a block is measured. Each observation (a block's mean over its measured tokens)
    enters by an exponential moving average; unmeasured blocks keep their value."""
    num_blocks: int
    alpha: float = EMA_ALPHA
    value: torch.Tensor = field(init=False)
    observations: int = 0

    def __post_init__(self):
        self.value = torch.full((self.num_blocks,), math.nan, dtype=torch.float64)

    def observe(self, block_error: torch.Tensor) -> None:
        """Take ``block_error`` ``[blocks]`` (NaN where a block was not measured)."""
        new = block_error.double().flatten()
        if new.numel() != self.num_blocks:
            raise ValueError(f"{new.numel()} block errors for {self.num_blocks} blocks")
        seen = torch.isfinite(new)
        first = seen & torch.isnan(self.value)
        blended = self.alpha * new + (1 - self.alpha) * self.value
        self.value = torch.where(first, new, torch.where(seen, blended, self.value))
        self.observations += 1

    def filled(self, prior: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[blocks]`` finite: the estimate, with unmeasured blocks at the largest measured
        value (nothing known of them: computed often), or, with ``prior`` ``[blocks]`` (say the
        warm-up analysis's scores), ranked among themselves by it at or above that value.
        All unmeasured: the prior itself, or ones."""
        known = torch.isfinite(self.value)
        if known.all():
            return self.value.clone()
        top = float(self.value[known].max()) if known.any() else 1.0
        fill = torch.full_like(self.value, top)
        if prior is not None:
            prior = prior.double().flatten()
            fill = top * (1 + prior - prior.min()) if known.any() else prior
        return torch.where(known, self.value, fill)


def adaptive_budget(work: float, num_steps: Optional[int], warmup: int, cooldown: int) -> float:
    """The budget of the steps with per-region periods (a fraction of their tokens per
    step) that makes the whole generation do ``work``: warm-up, cool-down and the first
    and last adaptive steps compute every token. Unknown ``num_steps``: ``work`` itself.
    May fall outside [1 / max(PERIODS), 1] when ``work`` is out of reach."""
    if num_steps is None:
        return work
    free = periodic_steps(num_steps, warmup, cooldown)
    if free <= 0:
        return 1.0
    return (work * num_steps - (num_steps - free)) / free


def periodic_steps(num_steps: int, warmup: int, cooldown: int) -> int:
    """How many steps run on per-region periods: those between the warm-up and the
    cool-down, less the first and the last of them (full steps)."""
    adaptive = max(num_steps - warmup - cooldown, 0)
    return adaptive - min(adaptive, 2)


def periodic_work_range(free: Optional[int], periods) -> tuple[float, float]:
    """(least, most) fraction of the tokens per step that `free` periodic steps can compute
    with the offered `periods`: every region on the longest, or on the shortest. Tokens of
    period p are due at the steps k = 1..free with k % p == 0 (`due`), so a stretch shorter
    than p computes none of them. Unknown `free`: the cycle means 1 / max, 1 / min."""
    longest, shortest = max(periods), min(periods)
    if not free:
        return 1 / longest, 1 / shortest
    return (free // longest) / free, (free // shortest) / free


@dataclass
class RegionPeriods:
    """One generation's per-block periods: ``block_periods`` ``[blocks]``, ``token_periods``
    ``[tokens]`` (every token takes its block's), assigned from the running ``estimate``.
    Blocks are the analysis's (``grid``, ``block`` in tokens)."""
    grid: tuple
    block: tuple
    budget: float
    prior: Optional[torch.Tensor] = None      # [blocks] the warm-up analysis's scores
    periods: tuple = PERIODS
    alpha: float = EMA_ALPHA
    horizon_power: float = 1.0                # the error at horizon j steps grows as j ** power
    estimate: ErrorEstimate = field(init=False)
    block_periods: Optional[torch.Tensor] = None
    token_periods: Optional[torch.Tensor] = None
    assignments: int = 0

    def __post_init__(self):
        self.block_tokens = block_token_counts(self.grid, self.block)
        self.estimate = ErrorEstimate(self.block_tokens.numel(), self.alpha)
        # per block, the last two steps k (after warm-up) it was computed at: k = 0 is
        # full and follows a full warm-up step
        self.computed_at = torch.zeros(2, self.block_tokens.numel(), dtype=torch.long)
        self.computed_at[1] = -1

    def horizon(self) -> torch.Tensor:
        """``[blocks]`` the steps between each block's last two computations: the horizon
        of the error its tokens showed at the last."""
        return self.computed_at[0] - self.computed_at[1]

    def observe(self, token_error: torch.Tensor) -> None:
        """Each image token's last measured error rate ``[tokens]`` (NaN unmeasured), per
        unit of time, as measured at each block's ``horizon()``: taken as an error per
        horizon ** horizon_power."""
        rate = block_nanmean(token_error.double().reshape(self.grid), self.block)
        self.estimate.observe((rate * self.horizon().double().view(rate.shape) ** (1 - self.horizon_power)).flatten())

    def assign(self) -> None:
        error = self.estimate.filled(self.prior)
        self.block_periods = assign_periods(error, self.block_tokens, self.budget, self.periods,
                                            self.horizon_power)
        self.token_periods = expand_blocks(self.block_periods.view(self.block_tokens.shape),
                                           self.block, self.grid).reshape(-1)
        self.assignments += 1

    def due(self, k: int) -> torch.Tensor:
        """Sorted positions ``[n]`` of the tokens due at step ``k`` after warm-up."""
        if self.token_periods is None:
            self.assign()
        if k > self.computed_at[0].max():          # once per step (branches share it)
            hit = k % self.block_periods.flatten() == 0
            self.computed_at = torch.where(hit, torch.stack([torch.full_like(self.computed_at[0], k),
                                                             self.computed_at[0]]), self.computed_at)
        return due(self.token_periods, k)

    def work(self) -> float:
        """The fraction of tokens computed per step under the current periods (cycle mean)."""
        return float((1.0 / self.token_periods.double()).mean())

    def token_fractions(self) -> dict:
        """{period: fraction of image tokens with it} under the current periods."""
        values, counts = torch.unique(self.token_periods, return_counts=True)
        return {int(p): float(c) / self.token_periods.numel() for p, c in zip(values, counts)}

    def levels(self) -> torch.Tensor:
        """``token_periods`` as region levels for the region-map PNG: period 1 active,
        2 medium, longer static."""
        return (self.token_periods <= 2).long() + (self.token_periods == 1).long()
