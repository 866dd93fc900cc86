"""The adaptive step schedule: counts derived by hand, and properties."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from jano_compile.config import JanoConfig, resolve_config
from jano_compile.schedule import Level, Phase, phase_counts, schedule_plan, step_level, step_phase


def steps_in(phase, num_steps, config):
    return [s for s in range(num_steps) if step_phase(s, num_steps, config) is phase]


def test_default_schedule_of_50_steps():
    # By hand: warm-up 0..5, cool-down 46..49; from step 6, a refresh every 10 steps
    # (6, 16, 26, 36; 46 is cool-down), medium every 5 steps that are not refreshes
    # (11, 21, 31, 41); the other 40 - 8 = 32 steps are active.
    config = JanoConfig(recipe="paper")
    assert steps_in(Phase.WARMUP, 50, config) == list(range(6))
    assert steps_in(Phase.COOLDOWN, 50, config) == [46, 47, 48, 49]
    assert steps_in(Phase.REFRESH, 50, config) == [6, 16, 26, 36]
    assert steps_in(Phase.MEDIUM, 50, config) == [11, 21, 31, 41]
    plan = schedule_plan(50, config)
    counts = [plan.count(level) for level in (Level.FULL, Level.MEDIUM, Level.ACTIVE)]
    assert counts == [14, 4, 32]
    assert phase_counts(50, config) == {Phase.WARMUP: 6, Phase.COOLDOWN: 4, Phase.REFRESH: 4,
                                        Phase.MEDIUM: 4, Phase.ACTIVE: 32, Phase.SKIP: 0}


def test_flux_schedule_of_50_steps():
    # By hand: warm-up 0..6, cool-down 48, 49; k = step - 7 over 0..40: refresh at
    # k = 0, 12, 24, 36 (steps 7, 19, 31, 43); medium at k = 4, 8, 16, 20, 28, 32, 40
    # (steps 11, 15, 23, 27, 35, 39, 47); active: 41 - 4 - 7 = 30.
    config = resolve_config("flux", {"recipe": "paper"})
    assert steps_in(Phase.REFRESH, 50, config) == [7, 19, 31, 43]
    assert steps_in(Phase.MEDIUM, 50, config) == [11, 15, 23, 27, 35, 39, 47]
    assert phase_counts(50, config)[Phase.ACTIVE] == 30


def test_unknown_length_places_no_cooldown():
    config = JanoConfig(recipe="paper")
    assert step_level(49, None, config) is Level.ACTIVE  # k = 43: neither 10 nor 5 divides it
    assert step_phase(49, None, JanoConfig(recipe="paper", num_inference_steps=50)) is Phase.COOLDOWN
    assert step_phase(49, 50, config) is Phase.COOLDOWN
    assert step_phase(60, 50, config) is Phase.COOLDOWN  # past the announced end: full


def test_negative_step_is_rejected():
    with pytest.raises(ValueError, match="step"):
        step_level(-1, 50, JanoConfig())


def test_levels_order_by_what_they_recompute():
    assert Level.FULL < Level.MEDIUM < Level.ACTIVE < Level.NONE
    assert [phase.level for phase in Phase] == [Level.FULL, Level.FULL, Level.MEDIUM,
                                                Level.ACTIVE, Level.NONE, Level.FULL]


configs = st.builds(
    JanoConfig, warmup_steps=st.integers(2, 10), cooldown_steps=st.integers(0, 6),
    static_interval=st.integers(1, 15), medium_interval=st.integers(1, 15),
    active_interval=st.integers(1, 4))


@settings(max_examples=80, deadline=None)
@given(configs, st.integers(0, 60))
def test_schedule_properties(config, extra_steps):
    num_steps = config.warmup_steps + config.cooldown_steps + extra_steps
    plan = schedule_plan(num_steps, config)
    assert len(plan) == num_steps
    assert all(level is Level.FULL for level in plan[:config.warmup_steps])
    assert all(level is Level.FULL for level in plan[num_steps - config.cooldown_steps:])
    if extra_steps:
        assert plan[config.warmup_steps] is Level.FULL  # first step after warm-up refreshes
    counts = phase_counts(num_steps, config)
    assert counts[Phase.REFRESH] == math.ceil(extra_steps / config.static_interval)
    assert sum(counts.values()) == num_steps
    # a level depends only on the step: any call order gives the same answers
    for step in reversed(range(num_steps)):
        assert step_level(step, num_steps, config) is plan[step]


@settings(max_examples=40, deadline=None)
@given(configs, st.integers(0, 80))
def test_without_length_the_pattern_never_ends(config, step):
    level = step_level(step, None, config)
    since = step - config.warmup_steps
    if since < 0 or since % config.static_interval == 0:
        assert level is Level.FULL
    elif since % config.medium_interval == 0:
        assert level is Level.MEDIUM
    elif since % config.active_interval == 0:
        assert level is Level.ACTIVE
    else:
        assert level is Level.NONE


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12))
def test_uses_regions_says_whether_some_step_computes_part_of_the_tokens(static, medium, active):
    """`uses_regions` (a config property, read where no region analysis can run) against the
    plan itself: some step after warm-up is a medium or active one, over a stretch long
    enough to hold every interval's multiples."""
    config = JanoConfig(warmup_steps=2, cooldown_steps=0, static_interval=static,
                        medium_interval=medium, active_interval=active)
    steps = 2 + static * medium * active + 1
    partial = {Level.MEDIUM, Level.ACTIVE} & set(schedule_plan(steps, config))
    assert config.uses_regions == bool(partial)
