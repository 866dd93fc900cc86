"""levels_from="error": each computed token records how far its forecast was off, and the
schedule ranks the regions by it after every full step (issue 9, item 2)."""
import math

import pytest
import torch

import jano_compile
from jano_compile.adaptive import AdaptiveSchedule
from jano_compile.analyzer import analyze, rerank_by_error
from jano_compile.clock import Tick
from jano_compile.config import JanoConfig
from jano_compile.passes.signature import Role

from .models import flux

GRID = (1, 8, 8)
QUADRANTS = {"top-left": [r * 8 + c for r in range(4) for c in range(4)],
             "bottom-right": [r * 8 + c for r in range(4, 8) for c in range(4, 8)]}


def _analysis(config):
    torch.manual_seed(0)
    latents = [torch.randn(64, 4) for _ in range(config.warmup_steps)]
    return analyze(latents, GRID, config)


def test_rerank_gives_the_active_level_to_the_largest_errors_at_the_same_sizes():
    config = JanoConfig(block_size=(1, 2, 2), static_fraction=0.5, medium_fraction=0.25)
    analysis = _analysis(config)
    errors = torch.full((64,), 0.01)
    errors[QUADRANTS["bottom-right"]] = 1.0
    errors[5] = math.nan                      # one unmeasured token: its block's others count
    ranked = rerank_by_error(analysis, errors)
    assert ranked.active_index.tolist() == QUADRANTS["bottom-right"]
    assert (ranked.active_index.numel(), ranked.medium_index.numel()) == \
        (analysis.active_index.numel(), analysis.medium_index.numel())
    unmeasured = torch.full((64,), 0.01)
    unmeasured[[0, 1, 8, 9]] = math.nan      # a block with no measured token ranks highest
    assert set(rerank_by_error(analysis, unmeasured).active_index.tolist()) >= {0, 1, 8, 9}


def run_with_moving_errors(config, moving_at, steps):
    """The schedule over `steps` with synthetic measured errors: 1.0 on the quadrant
    `moving_at(step)`, 0.01 elsewhere. Returns the decisions and the schedule."""
    schedule = AdaptiveSchedule(config)
    decisions = []
    for step in range(steps):
        def errors(moving=QUADRANTS[moving_at(step)]):
            e = torch.full((64,), 0.01)
            e[moving] = 1.0
            return e
        decision = schedule.decide(Tick(generation=0, step=step, call_in_step=0, time=float(step)), None, errors)
        if schedule.wants_latents(decision):
            schedule.record_latents(torch.randn(64, 4), GRID)
        decisions.append(decision)
    return decisions, schedule


def test_the_schedule_follows_a_region_that_moves(tmp_path):
    """Synthetic errors: the top-left quadrant changes in the first half of the run, the
    bottom-right in the second. After each full step the active level follows, and each
    ranking is drawn (save_dir)."""
    config = JanoConfig(warmup_steps=2, cooldown_steps=0, static_interval=4, medium_interval=2,
                        active_interval=1, block_size=(1, 2, 2), static_fraction=0.5,
                        medium_fraction=0.25, levels_from="error", num_inference_steps=20,
                        save_dir=str(tmp_path))
    decisions, schedule = run_with_moving_errors(config, lambda s: "top-left" if s < 10 else "bottom-right", 20)
    active_by_step = {d.step: d.index.tolist() for d in decisions if d.phase.value == "active"}
    # full steps at 2, 6, 10, 14, 18: the ranking after 10 sees the moved region
    assert active_by_step[3] == QUADRANTS["top-left"] and active_by_step[9] == QUADRANTS["top-left"]
    assert active_by_step[11] == QUADRANTS["bottom-right"] and active_by_step[19] == QUADRANTS["bottom-right"]
    assert schedule.reranks == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["region_map_000.png"] + [
        f"region_map_000_rerank{k:02d}.png" for k in range(1, 6)]


def test_the_graph_records_each_tokens_forecast_error_per_unit_of_time():
    """Two full steps at times 0 and 1: the forecast of the second is the first's output
    (one computed slot: held), so each token's error is mean |y2 - y1| over batch and
    channels, computed here from the eager model."""
    model, kwargs, n = flux(b=2, h=4, w=4)
    model.eval()
    second = {**kwargs, "hidden_states": kwargs["hidden_states"] * 1.5}
    f = torch.compile(model, backend="jano", options={"lowering": "eager"})
    ctl = jano_compile.controller(f)
    with torch.no_grad():
        y1, y2 = model(**kwargs, return_dict=False)[0], model(**second, return_dict=False)[0]
        ctl.refresh()
        f(**kwargs, return_dict=False)
        (graph,) = ctl._graphs.values()
        (error,) = ctl.store.tensors_of(id(graph), Role.FORECAST_ERROR)
        assert torch.isnan(error).all()           # nothing to compare with yet
        ctl.refresh()
        f(**second, return_dict=False)
    expected = (y2.float() - y1.float()).abs().mean(dim=(0, 2))
    torch.testing.assert_close(error, expected, atol=1e-5, rtol=1e-4)


def test_the_error_rate_is_per_unit_of_time_whichever_way_time_runs():
    """A sigma clock falls (1 -> 0), the step index rises: both give a finite rate per unit
    of |time| since the last computation; no previous computation, or no time passed, NaN."""
    from jano_compile.passes.forecast import forecast_error_rate
    pred = torch.zeros(1, 3, 2)
    fresh = torch.full((1, 3, 2), 0.5)
    for now, last in ((0.8, torch.tensor([0.9, math.nan, 0.8])), (3.0, torch.tensor([2.9, math.nan, 3.0]))):
        rate = forecast_error_rate(torch.tensor(now), pred, fresh, last)
        torch.testing.assert_close(rate[0], torch.tensor(5.0))
        assert torch.isnan(rate[1:]).all()


def test_levels_from_error_runs_in_the_compiled_schedule():
    """End to end on a tiny FLUX (random weights: no quality claim): the schedule re-ranks
    after its full steps, partial steps happen, and the run stays within a few percent of
    the eager model's, as with the warm-up ranking."""
    model, kwargs, n = flux(b=1, h=8, w=8)
    model.eval()
    options = dict(warmup_steps=3, cooldown_steps=1, static_interval=4, medium_interval=2,
                   active_interval=1, num_inference_steps=12, lowering="eager")
    from .test_adaptive import euler_loop
    with torch.no_grad():
        plain = euler_loop(model, kwargs, steps=12)
        runs = {}
        for source in ("warmup", "error"):
            f = torch.compile(model, backend="jano", options={**options, "levels_from": source})
            runs[source] = euler_loop(f, kwargs, steps=12)
            stats = jano_compile.controller(f).stats()
            torch._dynamo.reset()
            jano_compile.controller(model).auto_policy.schedule = None
    assert stats["reranks"] >= 2 and stats["compute_saved"] > 0
    scale = float(plain.abs().mean())
    for source, out in runs.items():
        assert float((out - plain).abs().mean()) < 0.05 * scale, source


def test_levels_from_error_needs_the_forecast():
    with pytest.raises(ValueError, match="levels_from.*reuse=\"forecast\""):
        JanoConfig(levels_from="error", reuse="hold")
