"""jano_compile.enable on real diffusers pipelines built from tiny random modules."""
import pytest
import torch

import jano_compile
from jano_compile.config import JanoConfig
from jano_compile.metrics import psnr
from jano_compile.schedule import step_phase

from .pipelines import PIPELINES, eager_and_jano, wan22_pipeline

STEPS = 12
CONFIG = dict(recipe="paper", warmup_steps=3, cooldown_steps=2, static_interval=4, medium_interval=2,
              threshold_mode="quantile", static_fraction=0.4, medium_fraction=0.3)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_enable_runs_the_schedule_in_a_pipeline(name, tmp_path, capsys):
    pipe, inputs = PIPELINES[name]()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, {**CONFIG, "save_dir": str(tmp_path)}, lowering="eager")
        result = pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    images = result.images if hasattr(result, "images") else result.frames
    stats = ctl.stats()
    assert stats["rewritten"], stats["fallback_reason"]
    config = JanoConfig(**CONFIG, num_inference_steps=STEPS)
    assert stats["levels"] == [step_phase(s, STEPS, config).value for s in range(STEPS)]
    assert 0 < stats["compute_saved"] < 1
    assert torch.isfinite(images).all()
    expected = (3, inputs["height"], inputs["width"])
    assert tuple(images.shape[-3:]) == expected or tuple(images.shape[-4:]) == (inputs.get("num_frames"), *expected)
    assert list(tmp_path.glob("region_map_*.png")) and list(tmp_path.glob("region_overlay_*.png"))
    progress = capsys.readouterr().err
    assert "jano=compiling" in progress and "jano=cooldown 100%" in progress   # the level on the progress bar
    jano_compile.disable(pipe)
    assert not isinstance(pipe.transformer, torch._dynamo.eval_frame.OptimizedModule)
    assert "set_timesteps" not in vars(pipe.scheduler)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_default_recipe_keeps_the_image_close_to_the_eager_pipelines(name):
    """Against the eager pipeline (the same generator): the default recipe skips work and
    stays above 30 dB (measured 38-59 dB on these tiny random pipelines, Wan and CogVideoX
    lowest; a forecast or cache bug costs far more), and after disable() the eager image
    comes back exactly."""
    eager, fast, again, (stats,) = eager_and_jano(*PIPELINES[name](), STEPS)
    saved = stats["compute_saved"]
    assert saved > 0.3 and psnr(fast, eager) > 30.0, (saved, psnr(fast, eager))
    torch.testing.assert_close(again, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_a_work_budget_in_a_pipeline_reads_measured_errors(name):
    """enable() with work= and forecast_kv (SD3: split CFG, two branches): the scheduler's
    sigma falls, and the periods still come from measured, finite errors."""
    pipe, inputs = PIPELINES[name]()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, {"work": 0.5, "forecast_kv": True, "block_size": (1, 2, 2)},
                                  lowering="eager")
        result = pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    images = result.images if hasattr(result, "images") else result.frames
    stats = ctl.stats()
    estimate = ctl.schedule.periods.estimate
    jano_compile.disable(pipe)
    assert stats["rewritten"] and torch.isfinite(images).all()
    assert estimate.observations >= 1 and torch.isfinite(estimate.value).all()
    assert stats["periods"] is not None and 0.2 < stats["compute_saved"] < 0.8


def test_enable_runs_each_expert_of_a_two_expert_pipeline_on_the_steps_it_takes():
    """Wan 2.2: `transformer` takes the timesteps >= boundary_ratio * num_train_timesteps,
    `transformer_2` the rest (diffusers' rule, counted here from the scheduler). Both are
    compiled; each schedule is a generation of its own steps (warm-up at its first, cool-down
    at its last), both save work, the video stays close to the eager pipeline's, and
    disable() gives both modules back. (Measured here: 41 dB, 40% of the tokens saved; the
    tiny random Wan varies between seeds, 28-76 dB with one transformer.)"""
    steps = 20
    pipe, inputs = wan22_pipeline(boundary_ratio=0.75)
    first, second = pipe.transformer, pipe.transformer_2
    eager, fast, again, stats = eager_and_jano(pipe, inputs, steps, experts=("transformer", "transformer_2"))
    high = sum(int(t) >= 0.75 * pipe.scheduler.config.num_train_timesteps for t in pipe.scheduler.timesteps)
    assert 4 < high < steps - 4
    assert [len(s["levels"]) for s in stats] == [high, steps - high]
    for s in stats:
        assert s["rewritten"] and s["calls"] == 2 * len(s["levels"])      # split CFG: two calls a step
        assert s["levels"][0] == "warmup" and s["levels"][-1] == "cooldown" and s["compute_saved"] > 0.1
    saved = (stats[0]["compute_saved"] * high + stats[1]["compute_saved"] * (steps - high)) / steps
    assert saved > 0.3 and psnr(fast, eager) > 30.0, (saved, psnr(fast, eager))
    assert pipe.transformer is first and pipe.transformer_2 is second
    torch.testing.assert_close(again, eager, rtol=0, atol=0)


def test_levels_agree_with_the_work_when_cfg_turns_off_midway():
    """SD3 batches CFG; a callback that turns guidance off makes later calls batch 1, a graph
    without caches: the step planned to skip work computes every token and reads as a
    refresh, so the skipped steps in `levels` are those that saved their work."""
    pipe, inputs = PIPELINES["sd3"]()

    def guidance_off(pipe, step, timestep, kwargs):
        if step == 4:
            pipe._guidance_scale = 1.0
        return {}
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, lowering="eager")
        pipe(**inputs, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
             callback_on_step_end=guidance_off)
        stats, records = ctl.stats(), list(ctl.step_records)
        jano_compile.disable(pipe)
    computed = {r.step: r.active for r in records}          # one call per step here (batched CFG)
    assert [level == "skip" for level in stats["levels"]] == [computed[s] == 0 for s in range(10)]
    assert stats["compute_saved"] == pytest.approx(stats["levels"].count("skip") / 10)


def test_a_model_in_two_graphs_counts_the_steps_of_its_rewritten_one():
    """A graph break splits the transformer's call into a graph jano cannot rewrite (a
    pre-hook's scaling of the latent: no attention) and the model, rewritten: every step runs
    both, and stats() describe the rewritten graph's steps (the unrewritten one's calls
    cleared them at every step: levels [], compute_saved None). The hook reads a parameter:
    jano finds a graph's model through its parameters."""
    pipe, inputs = PIPELINES["flux"]()

    def scale_then_break(module, args, kwargs):
        kwargs["hidden_states"] = kwargs["hidden_states"] * (1.0 + 0.0 * module.x_embedder.bias.sum())
        torch._dynamo.graph_break()
        return args, kwargs
    pipe.transformer.register_forward_pre_hook(scale_then_break, with_kwargs=True)
    with torch.no_grad(), pytest.warns(UserWarning, match="not rewritten"):
        ctl = jano_compile.enable(pipe, lowering="eager")
        pipe(**inputs, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    stats = ctl.stats()
    jano_compile.disable(pipe)
    assert stats["graphs"] == 2 and not stats["rewritten"]
    assert stats["fallback_reason"].startswith("1 of 2 graphs holding image tokens rewritten")
    assert len(stats["levels"]) == 10 and stats["levels"][-1] == "cooldown" and stats["compute_saved"] > 0.3
