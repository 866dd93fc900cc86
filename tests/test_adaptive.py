"""The automatic schedule in a plain sampling loop: levels follow the schedule, the extreme
thresholds reproduce plain compile / recompute only text, split CFG equals batched CFG."""
import logging

import pytest
import torch

import jano_compile
from jano_compile.config import JanoConfig
from jano_compile.schedule import step_phase

from .models import flux

STEPS = 10
SCHEDULE = dict(recipe="paper", warmup_steps=3, cooldown_steps=2, static_interval=4, medium_interval=2,
                num_inference_steps=STEPS)


def euler_loop(transformer, kwargs, steps=STEPS, cfg_split=None):
    """Rectified-flow Euler loop (timesteps 1 -> 0). `cfg_split` = uncond text states: call
    the transformer twice per step (cond, uncond) and mix with guidance 2."""
    x = kwargs["hidden_states"].clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = torch.full((x.shape[0],), float(sigmas[i]))
        args = {**kwargs, "hidden_states": x, "timestep": t, "return_dict": False}
        v = transformer(**args)[0]
        if cfg_split is not None:
            v_u = transformer(**{**args, "encoder_hidden_states": cfg_split})[0]
            v = v_u + 2.0 * (v - v_u)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def batched_cfg_loop(transformer, kwargs, uncond, steps=STEPS):
    """The Euler loop of `euler_loop(..., cfg_split=uncond)`, with cond and uncond as the two
    rows of one call per step (batched CFG, guidance 2)."""
    batched = {**kwargs, "encoder_hidden_states": torch.cat([kwargs["encoder_hidden_states"], uncond]),
               "pooled_projections": kwargs["pooled_projections"].repeat(2, 1)}
    x = kwargs["hidden_states"].clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = torch.full((2,), float(sigmas[i]))
        v = transformer(**{**batched, "hidden_states": x.repeat(2, 1, 1), "timestep": t, "return_dict": False})[0]
        v = v[1:] + 2.0 * (v[:1] - v[1:])
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def _compiled(model, **options):
    return torch.compile(model, backend="jano", dynamic=False,
                         options={"lowering": "eager", **SCHEDULE, **options})


def test_levels_follow_the_schedule_and_all_active_equals_plain():
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    with torch.no_grad():
        plain = euler_loop(model, kwargs)
        f = _compiled(model, threshold_mode="fixed", static_thresh=0.0, medium_thresh=0.0)   # every region active
        out = euler_loop(f, kwargs)
    stats = jano_compile.controller(f).stats()
    config = JanoConfig(**SCHEDULE)
    assert stats["mode"] == "auto" and stats["rewritten"]
    assert stats["levels"] == [step_phase(s, STEPS, config).value for s in range(STEPS)]
    assert stats["active_fraction_map"] == 1.0 and stats["compute_saved"] == 0.0
    torch.testing.assert_close(out, plain, atol=1e-4, rtol=1e-4)


def test_all_static_recomputes_only_text_on_active_steps(tmp_path):
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    with torch.no_grad():
        f = _compiled(model, threshold_mode="quantile", static_fraction=1.0, medium_fraction=0.0,
                      save_dir=str(tmp_path))
        out = euler_loop(f, kwargs)
    ctl = jano_compile.controller(f)
    stats = ctl.stats()
    assert torch.isfinite(out).all()
    active_steps = [c for c in ctl.step_records if c.phase == "active"]
    assert active_steps and all(c.active == 0 for c in active_steps)
    assert stats["compute_saved"] > 0
    assert ctl.region_map().shape == (1, 4, 4) and int(ctl.region_map().max()) == 0
    assert list(tmp_path.glob("region_map_*.png"))


def test_split_cfg_equals_batched_cfg():
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    uncond = torch.randn_like(kwargs["encoder_hidden_states"])
    options = dict(threshold_mode="quantile", static_fraction=0.4, medium_fraction=0.3)
    with torch.no_grad():
        fs = _compiled(model, **options)
        split = euler_loop(fs, kwargs, cfg_split=uncond)
        split_branches = jano_compile.controller(fs).stats()["branches"]
        torch._dynamo.reset()
        f = _compiled(model, **options)
        x = batched_cfg_loop(f, kwargs, uncond)
    stats = jano_compile.controller(f).stats()
    assert stats["compute_saved"] > 0
    assert split_branches == ["call1", "default"]
    torch.testing.assert_close(split, x, atol=1e-4, rtol=1e-4)


def test_compiling_again_with_other_options_changes_the_schedule():
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    saved = []
    with torch.no_grad():
        for rule in (dict(threshold_mode="fixed", static_thresh=0.0, medium_thresh=0.0),
                     dict(threshold_mode="quantile", static_fraction=1.0, medium_fraction=0.0)):
            torch._dynamo.reset()
            f = _compiled(model, **rule)
            euler_loop(f, kwargs)
            saved.append(jano_compile.controller(f).stats()["compute_saved"])
    assert saved[0] == 0.0 and saved[1] > 0.3


def _reference_tokens_loop(transformer, kwargs, reference: torch.Tensor, reference_ids: torch.Tensor,
                           steps: int = STEPS) -> torch.Tensor:
    """A FLUX Kontext-style Euler loop: the latent's tokens followed by a reference image's
    tokens of another grid (position ids with frame 1), which the loop keeps as they are."""
    x = kwargs["hidden_states"].clone()
    ids = torch.cat([kwargs["img_ids"], reference_ids])
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        args = {**kwargs, "hidden_states": torch.cat([x, reference], dim=1), "img_ids": ids,
                "timestep": torch.full((x.shape[0],), float(sigmas[i])), "return_dict": False}
        v = transformer(**args)[0][:, :x.shape[1]]
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def test_a_schedule_that_needs_no_regions_runs_where_the_latent_has_no_grid(caplog):
    """Reference tokens of another grid than the latent's (FLUX Kontext with a reference image
    of another size) leave the sequence without one (frames, h, w) grid, so no region
    analysis can run. The forecast recipe's steps compute every token or none: its schedule
    runs on (said once) with the levels it has where the grid is known; a schedule with
    regions (the paper recipe's intervals) turns off, with the reason, until the next run
    (release(); under enable() the next generation)."""
    import logging
    model, kwargs, _ = flux(b=1, h=4, w=4)
    model.eval()
    reference = torch.randn(1, 6, kwargs["hidden_states"].shape[2])
    reference_ids = torch.stack([torch.ones(6), torch.arange(6) // 3, torch.arange(6) % 3], dim=1)
    forecast = dict(lowering="eager", num_inference_steps=STEPS)
    with torch.no_grad():
        grid_known = torch.compile(model, backend="jano", dynamic=False, options=forecast)
        euler_loop(grid_known, kwargs)
        expected = jano_compile.controller(grid_known).stats()["levels"]
        torch._dynamo.reset()
        with caplog.at_level(logging.WARNING, logger="jano_compile"):
            f = torch.compile(model, backend="jano", dynamic=False, options=forecast)
            _reference_tokens_loop(f, kwargs, reference, reference_ids)
        stats = jano_compile.controller(f).stats()
        assert "skip" in expected and stats["levels"] == expected
        assert stats["auto_disabled"] is None and stats["compute_saved"] > 0
        assert sum("no region analysis" in r.message and "position ids" in r.message
                   for r in caplog.records) == 1
        with pytest.raises(RuntimeError, match="no region analysis: the latent could not be cut"):
            jano_compile.controller(f).region_map()
        torch._dynamo.reset()
        jano_compile.controller(f).release()
        f = torch.compile(model, backend="jano", dynamic=False, options={**forecast, **SCHEDULE})
        _reference_tokens_loop(f, kwargs, reference, reference_ids)
        ctl = jano_compile.controller(f)
        stats = ctl.stats()
        assert "could not be cut into image tokens" in stats["auto_disabled"]
        assert "the default recipe" in stats["auto_disabled"]     # what to change
        assert stats["full_calls"] == stats["calls"] == STEPS
        ctl.release()       # the inputs turned it off, not the model: on again for the next run
        euler_loop(f, kwargs)
    stats = ctl.stats()
    assert stats["auto_disabled"] is None and stats["full_calls"] < stats["calls"] == STEPS


def test_a_batch_that_grows_during_warm_up_leaves_the_schedule_without_regions(caplog):
    """AnyFlow without CFG but with negative embeddings doubles the latent batch after the
    first step: the warm-up latents differ in shape, so no region analysis (it raised and
    ended the generation); the default schedule, which needs none, runs on."""
    model, kwargs, _ = flux(b=1, h=4, w=4)
    doubled = {**kwargs, "encoder_hidden_states": kwargs["encoder_hidden_states"].repeat(2, 1, 1),
               "pooled_projections": kwargs["pooled_projections"].repeat(2, 1)}
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="jano_compile"):
        f = torch.compile(model.eval(), backend="jano", dynamic=False,
                          options=dict(lowering="eager", num_inference_steps=STEPS))
        x = kwargs["hidden_states"].clone()
        for i in range(STEPS):
            inputs = kwargs if x.shape[0] == 1 else doubled
            v = f(**{**inputs, "hidden_states": x, "timestep": sigmas[i].repeat(x.shape[0])}, return_dict=False)[0]
            x = (x + (sigmas[i + 1] - sigmas[i]) * v).repeat(2 // x.shape[0], 1, 1)
    ctl = jano_compile.controller(f)
    assert "skip" in ctl.stats()["levels"] and torch.isfinite(x).all()
    assert any("warm-up latents differ in shape" in r.message for r in caplog.records)
    with pytest.raises(RuntimeError, match="no region analysis: the warm-up latents differ in shape"):
        ctl.region_map()
