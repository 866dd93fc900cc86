"""Work budget (`work=`): per-region refresh periods chosen from measured forecast error
(issue 9, item 2; periods.py and adaptive.py)."""
import dataclasses
import itertools
import logging
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jano_compile
from jano_compile.config import JanoConfig
from jano_compile.periods import (PERIODS, ErrorEstimate, adaptive_budget, assign_periods, due,
                                  periodic_work_range)

from .models import flux
from .test_error_levels import QUADRANTS, run_with_moving_errors



def _expected_error(error, tokens, periods):
    """sum_b n_b e_b^2 mean_{j < p_b} j^2, written out from the definition."""
    return sum(n * e * e * sum(j * j for j in range(p)) / p for e, n, p in zip(error, tokens, periods))


def _work(tokens, periods):
    return sum(n / p for n, p in zip(tokens, periods)) / sum(tokens)


errors = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(error=errors, budget=st.floats(1 / 8, 1.0))
def test_periods_meet_the_budget_and_never_lose_to_a_uniform_period(error, budget):
    tokens = [4] * len(error)
    periods = assign_periods(torch.tensor(error, dtype=torch.float64), torch.tensor(tokens), budget).tolist()
    assert set(periods) <= set(PERIODS)
    assert _work(tokens, periods) <= budget + 1e-9
    for p in PERIODS:      # every uniform assignment the budget allows does no better
        if _work(tokens, [p] * len(error)) <= budget + 1e-9:
            assert _expected_error(error, tokens, periods) <= _expected_error(error, tokens, [p] * len(error)) + 1e-9


@settings(max_examples=60, deadline=None)
@given(error=errors, budget=st.floats(1 / 8, 1.0))
@example(error=[0.0, 1.4e-209], budget=0.75)       # squares underflow: ties go to the larger error
def test_a_larger_error_never_gets_a_longer_period(error, budget):
    periods = assign_periods(torch.tensor(error, dtype=torch.float64), torch.full((len(error),), 4), budget).tolist()
    for (e1, p1), (e2, p2) in itertools.combinations(zip(error, periods), 2):
        if e1 > e2:
            assert p1 <= p2
        elif e2 > e1:
            assert p2 <= p1


def test_periods_beat_every_assignment_with_one_move_less_work():
    """Five blocks of unequal sizes, every assignment tried. The greedy stops short of the
    budget by less than one move (a block's period halved: at most max n_b / 2 tokens), and
    until its first skipped move it is the convex relaxation's optimum; so no assignment that
    leaves that much of the budget unused does better."""
    torch.manual_seed(0)
    for _ in range(20):
        error, tokens = torch.rand(5) * 3, torch.randint(1, 9, (5,))
        budget = float(torch.empty(()).uniform_(0.2, 0.9))
        chosen = assign_periods(error, tokens, budget).tolist()
        one_move = float(tokens.max()) / 2 / float(tokens.sum())
        rivals = [ps for ps in itertools.product(PERIODS, repeat=5)
                  if _work(tokens.tolist(), ps) <= budget - one_move]
        assert _work(tokens.tolist(), chosen) <= budget + 1e-9
        for ps in rivals:
            assert _expected_error(error.tolist(), tokens.tolist(), chosen) <= \
                _expected_error(error.tolist(), tokens.tolist(), ps) + 1e-9


def test_budget_extremes():
    error, tokens = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([4, 4, 4])
    assert assign_periods(error, tokens, 1.0).tolist() == [1, 1, 1]
    assert assign_periods(error, tokens, 0.01).tolist() == [8, 8, 8]     # out of reach: the longest
    with pytest.raises(ValueError, match="finite"):
        assign_periods(torch.tensor([math.nan, 1.0, 1.0]), tokens, 0.5)


def test_the_estimate_is_a_moving_average_of_what_was_measured():
    estimate = ErrorEstimate(3, alpha=0.5)
    estimate.observe(torch.tensor([1.0, math.nan, 4.0]))
    estimate.observe(torch.tensor([3.0, 2.0, math.nan]))
    torch.testing.assert_close(estimate.value, torch.tensor([2.0, 2.0, 4.0], dtype=torch.float64))
    fresh = ErrorEstimate(3)
    fresh.observe(torch.tensor([1.0, math.nan, 2.0]))
    assert fresh.filled().tolist() == [1.0, 2.0, 2.0]     # unmeasured: the largest measured


def test_budget_counts_warmup_cooldown_and_the_full_adaptive_steps():
    # 50 steps, W3 C1: 46 adaptive steps, 2 of them full, 44 with periods
    b = adaptive_budget(0.5, 50, 3, 1)
    assert math.isclose((3 + 1 + 2 + 44 * b) / 50, 0.5)
    assert adaptive_budget(0.5, None, 3, 1) == 0.5


@given(free=st.integers(1, 40), periods=st.lists(st.integers(1, 12), min_size=1, max_size=4, unique=True))
def test_the_work_range_is_what_the_due_steps_compute(free, periods):
    """The least and most work a stretch of periodic steps can do equal the tokens `due`
    actually hands out over k = 1..free with every token on the longest or shortest period."""
    def done(period):
        token_periods = torch.full((6,), period)
        return sum(due(token_periods, k).numel() for k in range(1, free + 1)) / (6 * free)
    assert periodic_work_range(free, periods) == (done(max(periods)), done(min(periods)))
    assert periodic_work_range(None, periods) == (1 / max(periods), 1 / min(periods))


def test_a_work_budget_the_full_steps_meet_is_not_called_out_of_reach(caplog):
    """12 steps, warm-up 3, cool-down 1: 6 full steps are 50% of the work and the 6 periodic
    steps, shorter than the longest period (8), can compute nothing, so work=0.5 is met
    exactly: no warning. work=0.4 is not reachable: warned."""
    for work, warned in ((0.5, False), (0.4, True)):
        caplog.clear()
        config = JanoConfig(warmup_steps=3, cooldown_steps=1, block_size=(1, 2, 2), work=work,
                            num_inference_steps=12)
        with caplog.at_level(logging.WARNING, logger="jano_compile"):
            decisions, _ = run_with_moving_errors(config, lambda s: "top-left", 12)
        assert any("out of reach" in r.getMessage() for r in caplog.records) == warned
        if not warned:
            computed = [64 if d.index is None else d.index.numel() for d in decisions]
            assert sum(computed) / (64 * 12) == 0.5


def test_the_periods_follow_a_region_that_moves(tmp_path):
    steps = 40
    config = JanoConfig(warmup_steps=2, cooldown_steps=1, block_size=(1, 2, 2), work=0.5,
                        num_inference_steps=steps, save_dir=str(tmp_path))
    decisions, schedule = run_with_moving_errors(config, lambda s: "top-left" if s < 20 else "bottom-right", steps)
    # odd steps compute the period-1 blocks only (k = step - 2 odd): the moving quadrant,
    # all of it while the budget allows (before the move), most of it after the EMA caught up
    period_one = {d.step: set(d.index.tolist()) for d in decisions if d.step % 2 and d.index is not None}
    assert all(period_one[s] == set(QUADRANTS["top-left"]) for s in range(3, 20, 2))
    assert all(period_one[s] <= set(QUADRANTS["bottom-right"]) and len(period_one[s]) >= 12 for s in (35, 37))
    assert [d.phase.value for d in decisions[:3]] == ["warmup", "warmup", "refresh"]
    assert [d.phase.value for d in decisions[-2:]] == ["refresh", "cooldown"]    # the last adaptive step is full
    computed = sum(64 if d.index is None else d.index.numel() for d in decisions) / (64 * steps)
    assert 0.4 <= computed <= 0.5 + 1 / 64
    assert schedule.reranks >= 4
    assert len(list(tmp_path.glob("region_map_000_periods*.png"))) == schedule.reranks


def test_a_step_with_no_region_due_is_a_skip():
    config = JanoConfig(warmup_steps=2, cooldown_steps=1, block_size=(1, 2, 2), work=0.2,
                        num_inference_steps=30)
    decisions, _ = run_with_moving_errors(config, lambda s: "top-left", 30)
    skips = [d for d in decisions if d.phase.value == "skip"]
    assert skips and all(d.index.numel() == 0 for d in skips)


def test_work_budget_end_to_end_on_a_tiny_flux():
    """The compiled schedule under work=0.5 (random weights: no quality claim): it assigns
    periods, skips part of the work, stays within a few percent of the eager model."""
    model, kwargs, n = flux(b=1, h=8, w=8)
    model.eval()
    from .test_adaptive import euler_loop
    steps = 16
    with torch.no_grad():
        plain = euler_loop(model, kwargs, steps=steps)
        f = torch.compile(model, backend="jano", options=dict(work=0.5, num_inference_steps=steps,
                                                                block_size=(1, 2, 2), lowering="eager"))
        out = euler_loop(f, kwargs, steps=steps)
    stats = jano_compile.controller(f).stats()
    torch._dynamo.reset()
    assert stats["reranks"] >= 2 and stats["periods"] is not None
    assert math.isclose(sum(stats["periods"].values()), 1.0)
    assert 0.3 <= stats["compute_saved"] <= 0.6
    assert float((out - plain).abs().mean()) < 0.05 * float(plain.abs().mean())


@pytest.mark.parametrize("bad, why", [(0, "in \\(0, 1\\]"), (1.5, "in \\(0, 1\\]"), ("half", "in \\(0, 1\\]"),
                                      (True, "in \\(0, 1\\]")])
def test_work_must_be_a_fraction(bad, why):
    with pytest.raises(ValueError, match=f"JanoConfig.work.*{why}"):
        JanoConfig(work=bad)


def test_work_and_intervals_are_one_or_the_other():
    with pytest.raises(ValueError, match="work=0.5.*replaces \\['static_interval'\\]"):
        JanoConfig(work=0.5, static_interval=4)
    assert JanoConfig(work=0.5).static_interval == JanoConfig().static_interval
    # the schedule learns the generation's length by dataclasses.replace, which passes every field
    assert dataclasses.replace(JanoConfig(work=0.5), num_inference_steps=20).work == 0.5


def test_work_needs_the_forecast():
    with pytest.raises(ValueError, match="work.*reuse=\"forecast\""):
        JanoConfig(work=0.5, reuse="hold")


def test_under_static_shapes_the_due_sets_take_bucketed_lengths():
    """The due sets change with every assignment: static shapes pad them to buckets of N/16
    (runner.bucket_length) instead of compiling a graph per exact length."""
    from jano_compile.options import STATIC_BUCKETS as BUCKETS
    model, kwargs, n = flux(b=1, h=8, w=8)
    model.eval()
    from .test_adaptive import euler_loop
    with torch.no_grad():
        f = torch.compile(model, backend="jano", options=dict(work=0.5, num_inference_steps=16, block_size=(1, 1, 1),
                                                                lowering="eager", static_shapes=True))
        euler_loop(f, kwargs, steps=16)
    ctl = jano_compile.controller(f)
    (graph,) = ctl._graphs.values()
    lengths = set(graph.runner.static)
    torch._dynamo.reset()
    assert lengths and all(length % (n // BUCKETS) == 0 for length in lengths)
    assert ctl.stats()["compute_saved"] > 0.3
