"""jano_compile.enable on diffusers' modular pipelines (blocks, not one __call__)."""
import pytest
import torch

import jano_compile
import jano_compile.pipeline
from jano_compile.metrics import psnr

from .pipelines import MODULAR_PIPELINES, eager_and_jano, flux_pipeline

STEPS = 8


@pytest.mark.parametrize("name", sorted(MODULAR_PIPELINES))
def test_enable_runs_the_schedule_in_a_modular_pipeline(name, capsys):
    """The schedule runs (steps skip work), the image stays close to the eager pipeline's,
    the loop block's progress bar shows the levels, and disable() gives the eager image back."""
    pipe, inputs = MODULAR_PIPELINES[name]()
    eager, fast, again, (stats,) = eager_and_jano(pipe, inputs, STEPS)
    assert stats["rewritten"], stats["fallback_reason"]
    assert "skip" in stats["levels"] and stats["compute_saved"] > 0.2, stats
    assert psnr(fast, eager) > 30.0, psnr(fast, eager)
    assert "jano=cooldown 100%" in capsys.readouterr().err
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    assert not isinstance(pipe.transformer, torch._dynamo.eval_frame.OptimizedModule)


def test_a_failed_enable_leaves_the_pipeline_as_it_was(monkeypatch):
    """An error inside enable() (here: where it wraps the VAE) takes back everything it set,
    so the pipeline runs as before and enable() works once the cause is gone."""
    pipe, inputs = flux_pipeline()
    users_step = pipe.scheduler.step        # an instance attribute of the user's own, kept
    pipe.scheduler.step = users_step

    def fail(*args):
        raise RuntimeError("injected")
    monkeypatch.setattr(jano_compile.pipeline, "_save_overlays", fail)
    with pytest.raises(RuntimeError, match="injected"):
        jano_compile.enable(pipe, lowering="eager")
    assert not isinstance(pipe.transformer, torch._dynamo.eval_frame.OptimizedModule)
    assert "set_timesteps" not in vars(pipe.scheduler) and "progress_bar" not in vars(pipe)
    assert vars(pipe.scheduler)["step"] is users_step
    assert "cache_context" not in vars(pipe.transformer)
    with pytest.raises(RuntimeError, match="not enabled"):
        jano_compile.disable(pipe)
    monkeypatch.undo()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, lowering="eager")
        pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert ctl.stats()["compute_saved"] > 0.2
    jano_compile.disable(pipe)
    assert vars(pipe.scheduler)["step"] is users_step


def test_the_compiled_transformer_names_the_models_inputs_enabled_and_after():
    """What enable() puts in the pipeline is truthy and its forward has the model's
    signature, also after disable() (a pipeline that still holds it calls the eager model):
    modular pipelines pass only the inputs it names."""
    import inspect
    pipe, inputs = flux_pipeline()
    model_inputs = list(inspect.signature(pipe.transformer.forward).parameters)
    jano_compile.enable(pipe, lowering="eager")
    compiled = pipe.transformer
    assert bool(compiled) and list(inspect.signature(compiled.forward).parameters) == model_inputs
    jano_compile.disable(pipe)
    assert list(inspect.signature(compiled.forward).parameters) == model_inputs
