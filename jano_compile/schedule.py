"""Jano's adaptive step schedule: which tokens each denoising step recomputes.

With ``W = warmup_steps``, ``C = cooldown_steps`` and ``n`` steps, step ``s`` (0-based) is

* ``WARMUP`` (full) for ``s < W``;
* ``COOLDOWN`` (full) for ``s >= n - C``, when ``n`` is known (a step past ``n`` is also
  cool-down: computing everything is always safe). When ``n`` is unknown (``None``) no
  cool-down can be placed and every step after warm-up follows the pattern below; pass
  ``num_inference_steps`` to get one;
* otherwise, with ``k = s - W``: ``REFRESH`` (full) when ``k % static_interval == 0``, else
  ``MEDIUM`` when ``k % medium_interval == 0``, else ``ACTIVE`` when
  ``k % active_interval == 0``, else ``SKIP`` (no image token computed).

Under a work budget (``config.work``, see ``periods.py``) the intervals give way to
per-region periods: ``k == 0`` and the last step before cool-down are ``REFRESH``, every
other adaptive step is ``ACTIVE`` here, meaning "the regions that are due", which the
schedule turns into a full step, a partial one or a ``SKIP`` (``adaptive.py``).

Over 50 steps the defaults (the ``"forecast"`` recipe) give 3 warm-up steps, 1 cool-down step,
and refreshes every 3rd step in between (16) with 30 skipped steps; the ``"paper"`` recipe
gives 6 + 4 warm-up/cool-down steps, refreshes at 6, 16, 26, 36, medium steps at 11, 21,
31, 41 and 32 active steps.

A step's ``Level`` is the lowest region level it recomputes: tokens whose region level
(0 static, 1 medium, 2 active; see ``analyzer.RegionLevel``) is ``>= level`` are computed;
``Level.NONE`` computes none.
"""

from __future__ import annotations

import enum

from .config import JanoConfig


class Level(enum.IntEnum):
    """What one step recomputes: region levels ``>= Level`` (text tokens always)."""

    FULL = 0  #: every token (warm-up, refresh, cool-down)
    MEDIUM = 1  #: medium and active tokens
    ACTIVE = 2  #: active tokens only
    NONE = 3  #: no image token (a skipped step)


class Phase(str, enum.Enum):
    """Why a step has its level; for stats and progress bars."""

    WARMUP = "warmup"
    REFRESH = "refresh"
    MEDIUM = "medium"
    ACTIVE = "active"
    SKIP = "skip"
    COOLDOWN = "cooldown"

    @property
    def level(self) -> Level:
        return {Phase.MEDIUM: Level.MEDIUM, Phase.ACTIVE: Level.ACTIVE,
                Phase.SKIP: Level.NONE}.get(self, Level.FULL)


def step_phase(step: int, num_steps: int | None, config: JanoConfig) -> Phase:
    """The phase of 0-based ``step`` in a run of ``num_steps`` steps.

    ``num_steps=None`` falls back to ``config.num_inference_steps``; if that is ``None``
    too, no cool-down is placed. Depends only on its arguments.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if num_steps is None:
        num_steps = config.num_inference_steps
    if step < config.warmup_steps:
        return Phase.WARMUP
    if num_steps is not None and step >= num_steps - config.cooldown_steps:
        return Phase.COOLDOWN
    since_warmup = step - config.warmup_steps
    if config.work is not None:
        last = num_steps is not None and step == num_steps - config.cooldown_steps - 1
        return Phase.REFRESH if since_warmup == 0 or last else Phase.ACTIVE
    if since_warmup % config.static_interval == 0:
        return Phase.REFRESH
    if since_warmup % config.medium_interval == 0:
        return Phase.MEDIUM
    if since_warmup % config.active_interval == 0:
        return Phase.ACTIVE
    return Phase.SKIP


def step_level(step: int, num_steps: int | None, config: JanoConfig) -> Level:
    """The ``Level`` of 0-based ``step`` (see ``step_phase`` for the rule)."""
    return step_phase(step, num_steps, config).level


def schedule_plan(num_steps: int, config: JanoConfig) -> list[Level]:
    """Levels of steps ``0 .. num_steps - 1`` of a run of ``num_steps`` steps."""
    return [step_level(step, num_steps, config) for step in range(num_steps)]


def phase_counts(num_steps: int, config: JanoConfig) -> dict[Phase, int]:
    """How many steps of a ``num_steps`` run fall in each phase (every phase listed)."""
    counts = dict.fromkeys(Phase, 0)
    for step in range(num_steps):
        counts[step_phase(step, num_steps, config)] += 1
    return counts
