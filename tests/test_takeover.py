"""Manual control meeting the automatic schedule, and what a pipeline user meets around it:
refresh() while the schedule runs, set_active() from a step callback, a bare loop that
switches, disable() freeing the caches (and the model, once dropped), branches a
generation left idle, a swapped scheduler, a pipeline made with from_pipe(), backend
options through enable(), and the warnings that say when a setting or call does not do
what it looks like."""
import copy
import gc
import logging
import warnings
import weakref

import pytest
import torch

import jano_compile
from jano_compile.config import JanoConfig, explicit_options
from jano_compile.passes.signature import Role
from jano_compile.schedule import step_phase

from .models import flux
from .pipelines import flux_pipeline
from .test_adaptive import euler_loop

STEPS = 12
CONFIG = JanoConfig(warmup_steps=3, cooldown_steps=2, static_interval=4, medium_interval=2, active_interval=1)


def _history_times(ctl) -> list:
    (graph,) = ctl._graphs.values()
    return ctl.store.tensors_of(id(graph), Role.HISTORY_TIME)


def _planned_levels() -> list:
    """The level of each of STEPS steps under CONFIG, as the schedule plans them."""
    config = JanoConfig(**explicit_options(CONFIG), num_inference_steps=STEPS)
    return [step_phase(s, STEPS, config).value for s in range(STEPS)]


def _compiled(model, **options):
    """(compiled model, its controller): jano on `model`, lowered eagerly, static shapes
    from dynamo, `options` besides."""
    f = torch.compile(model.eval(), backend="jano", dynamic=False, options={"lowering": "eager", **options})
    return f, jano_compile.controller(f)


def _generate(pipe, inputs, callback=None):
    return pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                callback_on_step_end=callback).images


def test_refresh_while_the_schedule_runs_is_one_full_step_then_the_schedule_goes_on():
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")
        _generate(pipe, inputs)
        planned = ctl.stats()["levels"]

        def refresh_after(step):
            def callback(pipe_, i, t, kwargs):
                if i == step:
                    ctl.refresh()
                return kwargs
            return callback
        first_partial = next(s for s, level in enumerate(planned) if level not in ("warmup", "refresh"))
        _generate(pipe, inputs, refresh_after(first_partial - 1))
        stats = ctl.stats()
        assert stats["mode"] == "auto"
        expected = [*planned[:first_partial], "refresh", *planned[first_partial + 1:]]
        assert stats["levels"] == expected
        assert stats["compute_saved"] > 0
        _generate(pipe, inputs, lambda pipe_, i, t, kwargs: ctl.refresh() or kwargs)   # before every step
    # every step full; the warm-up and cool-down steps, full anyway, keep their names
    assert ctl.stats()["levels"] == [level if level in ("warmup", "cooldown") else "refresh" for level in planned]


def test_set_active_from_a_callback_lasts_one_generation():
    """The generation after one that a callback took over starts on the automatic schedule
    again, and gives the image a generation without the callback gives. The manual steps
    count in the taken-over generation's levels and saved work."""
    images, levels = {}, {}
    for take_over in (False, True):
        torch.manual_seed(0)                # the same random weights in both runs
        pipe, inputs = flux_pipeline()
        with torch.no_grad():
            ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")

            def callback(pipe_, i, t, kwargs):
                if take_over and i == 1:          # from step 2: a warm-up step taken over
                    ctl.set_active(torch.arange(0, ctl.stats()["num_image_tokens"], 2))
                return kwargs
            _generate(pipe, inputs, callback)
            levels[take_over] = ctl.stats()["levels"]
            if take_over:
                n = ctl.stats()["num_image_tokens"]
                assert levels[False][:2] == ["warmup"] * 2
                assert levels[True] == ["warmup"] * 2 + ["manual"] * (STEPS - 2)
                saved = (STEPS - 2) * (n - n // 2)        # full warm-up steps, then half the tokens
                assert ctl.stats()["compute_saved"] == pytest.approx(saved / (STEPS * n))
                assert ctl.stats()["mode"] == "manual"
                times = torch.cat([t for t in _history_times(ctl)])
                finite = times[torch.isfinite(times)]
                assert finite.numel() and bool(((finite >= 0) & (finite <= 1)).all())   # sigmas, not call counts
            images[take_over] = _generate(pipe, inputs)
            assert ctl.stats()["mode"] == "auto"
    torch.testing.assert_close(images[True], images[False], rtol=0, atol=0)


def test_a_bare_loop_that_switches_to_set_active_counts_steps_on_from_the_schedule():
    """The schedule's step index and manual control's call count are one time axis: after
    a switch in the second generation (where the calls since the model was built run far
    ahead of the step), the first manual call is recorded at the step after the last, and
    each manual call counts in stats() as the next step."""
    model, kwargs, n = flux(b=1, h=8, w=8)
    model.eval()
    switch = 6
    with torch.no_grad():
        f = torch.compile(model, backend="jano", dynamic=False,
                          options={"lowering": "eager", "num_inference_steps": STEPS,
                                   **jano_compile.config.explicit_options(CONFIG)})
        euler_loop(f, kwargs)
        euler_loop(f, kwargs, steps=switch)      # the second generation, up to the switch
        ctl = jano_compile.controller(f)
        active = torch.arange(0, n, 2)
        ctl.set_active(active)
        before = ctl.stats()
        f(**kwargs, return_dict=False)
        f(**kwargs, return_dict=False)
    newest = _history_times(ctl)[0]
    assert torch.equal(newest[active], torch.full((len(active),), float(switch + 1)))
    # stats count the manual calls as the steps after the schedule's: work saved included
    stats = ctl.stats()
    assert stats["levels"] == before["levels"] + ["manual", "manual"]
    saved = (before["compute_saved"] * switch + 2 * (1 - len(active) / n)) / (switch + 2)
    assert stats["compute_saved"] == pytest.approx(saved)


@pytest.mark.parametrize("static_calls", [False, True])
def test_disable_frees_the_caches_and_a_new_enable_counts_afresh(static_calls):
    """Nothing holds the caches after disable(): not the store, not a static call."""
    import gc
    import weakref
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager", options={"cuda_graphs": static_calls})
        _generate(pipe, inputs)
        assert ctl.stats()["cache_bytes"] > 0
        (graph,) = ctl._graphs.values()
        caches = [weakref.ref(t) for t in ctl.store.tensors_of(id(graph), Role.K_CACHE)]
        jano_compile.disable(pipe)
        gc.collect()
        assert caches and all(ref() is None for ref in caches)
        assert ctl.stats()["cache_bytes"] == 0 and ctl.stats()["graphs"] == 0
        assert ctl.stats()["levels"] == [] and ctl.stats()["compute_saved"] is None, "no run under way"
        assert ctl.stats()["calls"] == 0, "the calls count from the release"
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")
        _generate(pipe, inputs)
    assert ctl.stats()["graphs"] == 1 and ctl.stats()["cache_bytes"] > 0


def test_enable_takes_backend_options_beside_a_config():
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, JanoConfig(work=0.5), lowering="eager",
                                  options={"static_shapes": True, "static_buckets": 4})
        _generate(pipe, inputs)
    (graph,) = ctl._graphs.values()
    assert graph.runner.mode.static_shapes and graph.runner.options.static_buckets == 4
    pipe, _ = flux_pipeline()
    with pytest.raises(ValueError, match=r"\['work'\] given twice"):
        jano_compile.enable(pipe, JanoConfig(work=0.5), options={"work": 0.4})
    for keyword in (dict(mode="reduce-overhead"), dict(lowering="eager")):
        (key, value), = keyword.items()
        with pytest.raises(ValueError, match=rf"\['{key}'\] given twice"):
            jano_compile.enable(pipe, **keyword, options={key: "default" if key == "mode" else "inductor"})


def test_static_buckets_without_static_shapes_says_it_does_nothing(caplog):
    model, kwargs, _ = flux(b=1, h=4, w=4)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="jano_compile.runner"):
        f, _ = _compiled(model, static_buckets=64)
        f(**kwargs, return_dict=False)
    assert any("static_buckets=64 has no effect" in r.message and "static_shapes=True" in r.message
               for r in caplog.records)


def test_stats_before_any_call_say_why_nothing_is_rewritten():
    model, _, _ = flux(b=1, h=4, w=4)
    stats = jano_compile.controller(torch.compile(model, backend="jano")).stats()
    assert not stats["rewritten"] and "not called yet" in stats["fallback_reason"]


def _bare_run(caplog, options, generations=1, steps=STEPS, take_over=False):
    model, kwargs, n = flux(b=1, h=8, w=8)
    model.eval()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="jano_compile"):
        f, ctl = _compiled(model, **options)
        if take_over:
            f(**kwargs, return_dict=False)
            ctl.set_active(torch.arange(0, n, 2))
        for _ in range(generations):
            euler_loop(f, kwargs, steps=steps)
    return [r.getMessage() for r in caplog.records]


def test_no_length_warning_for_a_user_who_drives_set_active(caplog):
    """The warning that the generation's length is unknown is for the automatic schedule:
    the same bare loop warns (the control), and does not once the user drives set_active."""
    assert any("num_inference_steps is unknown" in m for m in _bare_run(caplog, {}))
    caplog.clear()
    torch._dynamo.reset()
    assert not any("num_inference_steps is unknown" in m for m in _bare_run(caplog, {}, take_over=True))


def test_a_generation_of_another_length_than_configured_warns_once(caplog):
    messages = _bare_run(caplog, {"num_inference_steps": 20}, generations=3, steps=STEPS)
    said = [m for m in messages if "a generation ran 12 steps, but num_inference_steps=20" in m]
    assert len(said) == 1


@pytest.mark.parametrize("periods,work,says", [
    ((1,), 0.5, "out of reach: the full steps"),
    ((40,), 0.5, "more than the periods can use: the shortest period offered (40 steps)"),
])
def test_a_budget_the_periods_cannot_meet_is_said_with_its_reason(caplog, periods, work, says):
    messages = _bare_run(caplog, {"work": work, "periods": periods, "num_inference_steps": 24}, steps=24)
    assert any(says in m for m in messages), messages


def test_stats_of_a_run_on_a_fallback_graph_say_it_saves_nothing():
    """dynamic=None: a second shape gets a symbolic graph that runs unrewritten; the stats
    describe that run, not the first shape's savings."""
    model, kwargs, n = flux(b=1, h=8, w=8)
    model.eval()
    _, other, _ = flux(b=1, h=4, w=8)
    with torch.no_grad():
        f = torch.compile(model, backend="jano",
                          options={"lowering": "eager", **jano_compile.config.explicit_options(CONFIG),
                                   "num_inference_steps": STEPS})
        euler_loop(f, kwargs)
        ctl = jano_compile.controller(f)
        assert ctl.stats()["compute_saved"] > 0
        euler_loop(f, {**other, "encoder_hidden_states": kwargs["encoder_hidden_states"]}, steps=3)
    stats = ctl.stats()
    assert stats["compute_saved"] is None and stats["levels"] == []


def test_img2img_runs_its_schedule_over_the_steps_it_takes():
    """strength < 1: the pipeline starts at the scheduler's begin index; the run is the
    steps from there (its cool-down last, no forecast step at the end), on those sigmas."""
    import diffusers as D
    pipe, inputs = flux_pipeline()
    img2img = D.FluxImg2ImgPipeline(**pipe.components)
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ctl = jano_compile.enable(img2img, CONFIG, lowering="eager")
        img2img(**inputs, image=image, strength=0.6, num_inference_steps=20,
                generator=torch.Generator().manual_seed(0))
    levels = ctl.stats()["levels"]
    assert len(levels) == 12 and levels[-CONFIG.cooldown_steps:] == ["cooldown"] * CONFIG.cooldown_steps
    assert ctl.auto_policy.scheduler_clock.times[0] == pytest.approx(float(img2img.scheduler.sigmas[8]))


def test_enable_refuses_what_it_cannot_drive():
    pipe, inputs = flux_pipeline()
    other = type(pipe)(**pipe.components)           # a second pipeline on the same transformer
    jano_compile.enable(pipe, lowering="eager")
    with pytest.raises(RuntimeError, match="already enabled on another pipeline"):
        jano_compile.enable(other, lowering="eager")
    pipe, _ = flux_pipeline()
    pipe.transformer = torch.compile(pipe.transformer)
    with pytest.raises(TypeError, match="already compiled"):
        jano_compile.enable(pipe)
    pipe, _ = flux_pipeline()
    pipe.transformer.compile(backend="eager")      # in place: its compiled call would bypass jano's
    with pytest.raises(TypeError, match=r"compiled in place \(transformer.compile\(\)\)"):
        jano_compile.enable(pipe)
    pipe, _ = flux_pipeline()
    jano_compile.enable(pipe, lowering="eager")
    with pytest.raises(TypeError, match=r"copy the pipeline before jano_compile.enable\(\)"):
        copy.deepcopy(pipe)
    jano_compile.disable(pipe)
    copy.deepcopy(pipe)
    pipe, _ = flux_pipeline()
    from diffusers import FirstBlockCacheConfig
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(ValueError, match=r"diffusers' cache on \(FirstBlockCacheConfig.*disable_cache\(\) before"):
        jano_compile.enable(pipe)
    pipe, _ = flux_pipeline()
    with pytest.raises(ValueError, match=r"JanoConfig\.work=1\.5"):
        jano_compile.enable(pipe, {"work": 1.5})      # at once, not at the first denoising step
    with pytest.raises(TypeError, match=r"sets backend and dynamic itself.*leave backend and dynamic out"):
        jano_compile.enable(pipe, dynamic=True, backend="inductor")
    assert getattr(pipe, "_jano_handle", None) is None


def test_enable_on_a_second_transformer_without_a_split_rule_says_it_runs_as_it_is():
    """A pipeline holding `transformer_2` whose config does not say which steps it runs
    (Wan 2.2's `boundary_ratio`) gets jano on `transformer` only, with a warning."""
    pipe, inputs = flux_pipeline()
    pipe.transformer_2 = copy.deepcopy(pipe.transformer)
    with pytest.warns(UserWarning, match=r"pipe.transformer_2 runs as it is.*no `boundary_ratio`"):
        jano_compile.enable(pipe, lowering="eager")
    assert not isinstance(pipe.transformer_2, torch._dynamo.eval_frame.OptimizedModule)
    jano_compile.disable(pipe)


def test_refresh_before_the_first_call_of_a_bare_loop_warns_that_it_starts_manual_control():
    model, kwargs, _ = flux(b=1, h=4, w=4)
    f, ctl = _compiled(model, num_inference_steps=STEPS)
    with pytest.warns(UserWarning, match=r"refresh\(\) before the model's first call starts manual control"):
        ctl.refresh()
    with torch.no_grad():
        euler_loop(f, kwargs, steps=STEPS)
    assert ctl.stats()["mode"] == "manual" and ctl.stats()["full_calls"] == ctl.stats()["calls"] == STEPS


def test_a_skip_step_of_a_model_without_a_skip_tail_computes_no_image_token(monkeypatch, caplog):
    """A model whose outputs depend on the computed tokens after the exit has no skip tail
    (here: Wan's tail refused as such a model's is): its skip steps run the graph on no
    image token, reading the caches the full step before them must therefore fill; said
    once, with the reason."""
    import jano_compile.rewrite
    from jano_compile.passes.plan import Unrewritable

    from .models import FAMILIES

    def no_tail(gm):
        raise Unrewritable("no tail: the outputs still depend on the computed tokens")
    monkeypatch.setattr(jano_compile.rewrite, "skip_tail", no_tail)
    model, kwargs, n = FAMILIES["wan"].build(b=1, h=4, w=4)
    model.eval()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="jano_compile.controller"):
        f = torch.compile(model, backend="jano", dynamic=False,
                          options={"lowering": "eager", "num_inference_steps": STEPS})   # intervals 3: skips
        euler_loop(f, kwargs)
        ctl = jano_compile.controller(f)
    (graph,) = ctl._graphs.values()
    assert graph.runner.tail is None and ctl.reports[0].skip_steps.startswith("no tail")
    skips = [r for r in ctl.step_records if r.phase == "skip"]
    assert skips and all(not r.full and r.active == 0 for r in skips)
    said = [r.message for r in caplog.records if "compute no image token" in r.message]
    assert len(said) == 1 and "no tail: the outputs still depend" in said[0], said


def test_clocks_count_at_most_max_branches_per_step(caplog):
    """Calls within one step beyond MAX_BRANCHES share the last branch (said once); the
    next step starts at the first branch again."""
    from jano_compile.clock import MAX_BRANCHES, SchedulerClock, TimestepClock
    timestep, scheduler = TimestepClock(), SchedulerClock()
    scheduler.start_generation()
    calls = MAX_BRANCHES + 3
    with caplog.at_level(logging.WARNING, logger="jano_compile.clock"):
        by_timestep = [timestep.tick(0.9).call_in_step for _ in range(calls)]
        by_scheduler = [scheduler.tick().call_in_step for _ in range(calls)]
    expected = [*range(MAX_BRANCHES), *[MAX_BRANCHES - 1] * 3]
    assert by_timestep == by_scheduler == expected
    messages = [r.message for r in caplog.records]
    assert sum("calls within one step (the same timestep)" in m for m in messages) == 1   # once per clock
    assert sum("no step of the pipeline's scheduler between them" in m for m in messages) == 1
    scheduler.end_step()
    assert (timestep.tick(0.8).call_in_step, scheduler.tick().call_in_step) == (0, 0)


def test_repeated_calls_at_one_timestep_allocate_at_most_max_branches_cache_sets():
    """A warm-up or timing loop that calls the model again and again on one input: the
    caches stop growing after MAX_BRANCHES branches."""
    from jano_compile.clock import MAX_BRANCHES
    model, kwargs, _ = flux(b=1, h=4, w=4)
    with torch.no_grad():
        f, ctl = _compiled(model)
        f(**kwargs, return_dict=False)
        one_set = ctl.stats()["cache_bytes"]
        for _ in range(3 * MAX_BRANCHES):
            f(**kwargs, return_dict=False)
    stats = ctl.stats()
    assert stats["cache_bytes"] == MAX_BRANCHES * one_set
    assert len(stats["branches"]) == MAX_BRANCHES


def test_split_cfg_in_a_bare_loop_keeps_its_branches_under_set_active():
    """Cond and uncond calls at each timestep; set_active() after the first step: each
    branch's partial steps read its own caches, as two loops of one branch each do."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    texts = {"cond": kwargs["encoder_hidden_states"], "uncond": torch.randn_like(kwargs["encoder_hidden_states"])}
    active = torch.arange(0, n, 3)

    def run(branches):
        torch._dynamo.reset()
        f, ctl = _compiled(model)
        outputs = {}
        for step, t in enumerate((0.9, 0.8, 0.7)):
            if step == 1:
                ctl.set_active(active)
            for name in branches:
                step_kwargs = {**kwargs, "encoder_hidden_states": texts[name], "timestep": torch.full((1,), t)}
                outputs[name] = f(**step_kwargs, return_dict=False)[0]
        return outputs, ctl.stats()

    with torch.no_grad():
        split, stats = run(("cond", "uncond"))
        alone = {name: run((name,))[0][name] for name in texts}
    assert stats["full_calls"] == 2 and sorted(stats["branches"]) == ["call1", "default"]
    for name in texts:
        torch.testing.assert_close(split[name], alone[name], rtol=0, atol=0)


def test_repeated_calls_at_one_timestep_are_not_taken_for_split_cfg_under_set_active(caplog):
    """A call at inputs A, refresh(), a call at inputs B at the same timestep (the schedule
    takes it for a second CFG branch, with caches of its own), then set_active() and more
    calls at B and that timestep (a manual loop that never changes the timestep): each is a
    step that goes on with the caches the call before it wrote, so it equals the eager model
    on B. The clock cannot tell such calls from split CFG at a frozen timestep: a warning
    says so once and names ctl.branch(); the clock's warning about calls beyond
    MAX_BRANCHES per step (they would share the fourth branch) is not given."""
    from jano_compile.clock import MAX_BRANCHES
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    later = {**kwargs, "hidden_states": torch.randn_like(kwargs["hidden_states"])}
    with torch.no_grad():
        eager = model(**later, return_dict=False)[0]
        f, ctl = _compiled(model)
        f(**kwargs, return_dict=False)
        ctl.refresh()
        f(**later, return_dict=False)
        ctl.set_active(torch.arange(0, n, 2))
        with pytest.warns(UserWarning, match=r"again at the same timestep.*ctl\.branch\(") as caught:
            with caplog.at_level(logging.WARNING, logger="jano_compile.clock"):
                for _ in range(MAX_BRANCHES + 1):
                    out = f(**later, return_dict=False)[0]
                    assert not ctl.last_call.full and ctl.last_call.branch == "call1"
                    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    assert sum("again at the same timestep" in str(w.message) for w in caught) == 1
    assert caught[0].filename == __file__      # the user's line, not dynamo's
    assert not [r for r in caplog.records if "calls within one step" in r.message]


def test_a_second_graph_for_the_same_shapes_is_said_once():
    """An input of other strides (same shapes and values) makes dynamo capture the model
    again; that graph keeps caches of its own, which is said once, at the user's line, with
    what to do. Calls at another shape (a second resolution) are not such a case."""
    model, kwargs, _ = flux(b=1, h=4, w=4)
    latent = kwargs["hidden_states"]
    strided = latent.transpose(1, 2).contiguous().transpose(1, 2)
    other_batch = {**kwargs, **{k: torch.cat([v, v]) for k, v in kwargs.items()
                                if k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")}}
    with torch.no_grad():
        f, ctl = _compiled(model.eval())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f(**kwargs, return_dict=False)
            f(**other_batch, return_dict=False)
        with pytest.warns(UserWarning, match=r"captured .* again for inputs of the same shapes.*contiguous") as caught:
            f(**{**kwargs, "hidden_states": strided}, return_dict=False)
        assert caught[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f(**kwargs, return_dict=False)
            f(**{**kwargs, "hidden_states": strided}, return_dict=False)
    assert ctl.stats()["graphs"] == 3


def test_named_branches_keep_split_cfg_apart_at_a_frozen_timestep():
    """Cond and uncond called in turn at one timestep that never moves (a test harness, not
    a sampling loop): the clock cannot tell branches from repeated steps, ctl.branch() can.
    After set_active(), each branch's partial steps read its own caches and equal the eager
    model on its own inputs; no warning."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    inputs = {"cond": kwargs, "uncond": {**kwargs, "encoder_hidden_states": torch.randn_like(
        kwargs["encoder_hidden_states"]), "pooled_projections": torch.randn_like(kwargs["pooled_projections"])}}
    with torch.no_grad():
        eager = {name: model(**kw, return_dict=False)[0] for name, kw in inputs.items()}
        f, ctl = _compiled(model)
        for name, kw in inputs.items():
            with ctl.branch(name):
                f(**kw, return_dict=False)
        ctl.set_active(torch.arange(0, n, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(2):
                for name, kw in inputs.items():
                    with ctl.branch(name):
                        out = f(**kw, return_dict=False)[0]
                    assert not ctl.last_call.full and ctl.last_call.branch == name
                    torch.testing.assert_close(out, eager[name], rtol=1e-4, atol=1e-5)
    assert ctl.branch_name is None
    with pytest.raises(TypeError, match="non-empty str"):
        with ctl.branch(""):
            pass


def test_graphs_dynamo_dropped_free_their_caches():
    """torch._dynamo.reset() (or any recompile that drops a graph) frees that graph's caches:
    the controller holds graphs weakly; compiling the model again starts afresh."""
    import gc
    model, kwargs, _ = flux(b=1, h=4, w=4)
    model.eval()
    with torch.no_grad():
        f, ctl = _compiled(model)
        f(**kwargs, return_dict=False)
        one_set = ctl.stats()["cache_bytes"]
        assert one_set > 0 and ctl.stats()["graphs"] == 1
        torch._dynamo.reset()
        gc.collect()
        assert (ctl.stats()["cache_bytes"], ctl.stats()["graphs"]) == (0, 0)
        g, ctl_g = _compiled(model)
        g(**kwargs, return_dict=False)
    assert ctl_g is ctl
    assert ctl.stats()["cache_bytes"] == one_set and ctl.stats()["compiles"] == 1


def test_a_model_whose_parameters_were_replaced_keeps_its_controller():
    """load_state_dict(..., assign=True) gives the model new Parameter objects: the compiled
    graph finds the model's controller through the module, and set_active() still applies."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    with torch.no_grad():
        f, ctl = _compiled(model)
        f(**kwargs, return_dict=False)
        ctl.set_active(torch.arange(0, n, 2))
        model.load_state_dict(model.state_dict(), assign=True)
        f(**kwargs, return_dict=False)
    assert jano_compile.controller(f) is ctl
    assert ctl.stats()["calls"] == 2 and not ctl.last_call.full


def test_a_generation_dynamo_ran_uncompiled_is_said():
    """After enable()/disable() rounds with other options or shapes dynamo's recompile limit
    can be reached: it then runs the transformer uncompiled, so jano sees no call; said once,
    and stats() gives it as the reason (not "not called yet")."""
    torch._dynamo.reset()
    pipe, inputs = flux_pipeline()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught, \
            torch._dynamo.config.patch(recompile_limit=2):
        warnings.simplefilter("always")
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")
        for height in (32, 48):                  # two graphs: the limit
            _generate(pipe, {**inputs, "height": height})
        assert ctl.calls == 2 * STEPS
        jano_compile.disable(pipe)
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager", options={"static_shapes": True})
        calls = ctl.calls
        _generate(pipe, inputs)
        _generate(pipe, inputs)
    assert ctl.calls == calls
    assert sum("none called the jano-compiled transformer" in str(w.message) for w in caught) == 1
    stats = ctl.stats()
    assert "recompile limit" in stats["fallback_reason"] and stats["compute_saved"] is None
    torch._dynamo.reset()


def test_after_release_the_same_calls_give_the_same_outputs():
    """release() starts the count of a bare loop's calls afresh: a first call at the last
    call's timestep was a second CFG branch of that step, with caches of its own."""
    model, kwargs, _ = flux(b=1, h=4, w=4)
    f, ctl = _compiled(model)
    runs = []
    for _ in range(2):
        ctl.release()
        with torch.no_grad():
            outputs = [f(**kwargs, return_dict=False)[0]]
            ctl.set_active(torch.tensor([0, 3]))
            outputs.append(f(**{**kwargs, "hidden_states": kwargs["hidden_states"] + 0.1}, return_dict=False)[0])
        runs.append(outputs)
        assert ctl.stats()["branches"] == ["default"] and not ctl.last_call.full
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"cuda_graphs": True}], ids=["plain-calls", "static-calls"])
def test_a_branch_a_generation_left_idle_is_freed_when_the_next_starts(options):
    """Split CFG in the first generation, none in the next two: the uncond branch's caches
    (and the static calls that hold them) go when the third generation starts (the second
    did not call it); the images do not change (every generation starts afresh)."""
    model, kwargs, _ = flux(b=1, h=4, w=4)
    uncond = torch.zeros_like(kwargs["encoder_hidden_states"])
    f, ctl = _compiled(model, num_inference_steps=STEPS, **options)
    with torch.no_grad():
        euler_loop(f, kwargs, cfg_split=uncond)
        both = ctl.stats()["cache_bytes"]
        assert ctl.stats()["branches"] == ["call1", "default"]
        (graph,) = ctl._graphs.values()
        uncond_state = id(next(s for (_, branch), s in ctl.store._states.items() if branch == "call1"))
        assert any(key[2] == uncond_state for key in graph.runner._calls) == bool(options)
        outputs = [euler_loop(f, kwargs) for _ in range(2)]
        one = ctl.stats()["cache_bytes"]
        assert not any(key[2] == uncond_state for key in graph.runner._calls)   # before a new id is handed out
        fresh, _ = _compiled(copy.deepcopy(model), num_inference_steps=STEPS, **options)
        expected = euler_loop(fresh, kwargs)
    assert one == both // 2 and sorted(branch for _, branch in ctl.store._states) == ["default"]
    for output in outputs:
        torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_a_model_that_ran_under_jano_is_freed_once_dropped():
    """The controller is the value of a registry entry keyed weakly by its model: a strong
    reference from the controller back to the model kept both alive (every transformer
    driven through jano stayed in memory, disable() or not)."""
    model, kwargs, _ = flux(b=1, h=4, w=4)
    f, _ = _compiled(model)
    with torch.no_grad():
        f(**kwargs)
    bare = weakref.ref(model)
    pipe, inputs = flux_pipeline()
    jano_compile.enable(pipe, lowering="eager")
    with torch.no_grad():
        pipe(**inputs, num_inference_steps=4)
    enabled = weakref.ref(pipe.transformer._orig_mod)
    jano_compile.disable(pipe)
    pipe_left_enabled, _ = flux_pipeline()              # dropped without disable(): the clock
    jano_compile.enable(pipe_left_enabled, lowering="eager")   # the controller keeps must not hold it
    with torch.no_grad():
        pipe_left_enabled(**inputs, num_inference_steps=4)
    left_enabled = weakref.ref(pipe_left_enabled.transformer._orig_mod)
    del model, f, pipe, pipe_left_enabled
    gc.collect()
    assert bare() is None and enabled() is None and left_enabled() is None


def test_a_scheduler_swapped_in_after_enable_drives_the_clock():
    """`pipe.scheduler = X.from_config(...)` after enable(): the new scheduler's steps are the
    generation's steps (all calls counted as one step ran them all as warm-up, full)."""
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")
        first = pipe.scheduler
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        _generate(pipe, inputs)
        assert not {"set_timesteps", "step"} & set(vars(first))      # the swapped-out one is left alone
        swapped = ctl.stats()["levels"]
        _generate(pipe, inputs)
    expected = _planned_levels()
    assert swapped == ctl.stats()["levels"] == expected
    # a new generation that runs no step (WanAnimate sets the timesteps again after its last
    # segment) leaves the stats of the last one; its first step that reaches no call clears them
    pipe.scheduler.set_timesteps(STEPS)
    assert ctl.stats()["levels"] == expected
    pipe.scheduler.step(torch.zeros(1, 4), pipe.scheduler.timesteps[0], torch.zeros(1, 4))
    assert ctl.stats()["levels"] == [] and ctl.stats()["compute_saved"] is None


def test_a_pipeline_made_with_its_own_scheduler_drives_the_clock_with_it():
    """from_pipe(pipe, scheduler=<its own>) after enable(pipe): the pipeline whose loop calls
    the model drives the clock with its scheduler. Its generation, right after one of pipe's
    that a step callback broke off (the clock parked mid-generation), runs the schedule
    from its warm-up and gives the image pipe gives on the same inputs; so does pipe's next."""
    from diffusers import FluxPipeline
    pipe, inputs = flux_pipeline()

    def break_off(pipe_, step, t, kwargs):
        if step == 5:
            raise KeyboardInterrupt
        return kwargs
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")
        expected = _generate(pipe, inputs)
        other = FluxPipeline.from_pipe(pipe, scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config))
        with pytest.raises(KeyboardInterrupt):
            _generate(pipe, inputs, break_off)
        assert len(ctl.stats()["levels"]) == 6 < STEPS
        images = _generate(other, inputs)
        assert ctl.stats()["levels"] == _planned_levels()
        again = _generate(pipe, inputs)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_enable_on_a_pipeline_sharing_the_enabled_transformer_says_it_runs_jano_already():
    from diffusers import FluxPipeline
    pipe, _ = flux_pipeline()
    jano_compile.enable(pipe, lowering="eager")
    with pytest.raises(RuntimeError, match="enabled on through another pipeline.*leave enable\\(\\) out"):
        jano_compile.enable(FluxPipeline.from_pipe(pipe))


def test_heun_evaluations_at_one_time_are_branches_of_one_step():
    """FlowMatchHeun steps the scheduler twice at each time after the first (timesteps t0, t1,
    t1, t2, ...), on different latents: N steps, not 2N - 1, each time's second evaluation a
    branch of its own (its forecast history holds that evaluation's outputs only), the
    schedule placed over the N steps, and the image close to the eager pipeline's."""
    from diffusers import FlowMatchHeunDiscreteScheduler
    from jano_compile.metrics import psnr
    from .pipelines import sd3_pipeline
    pipe, inputs = sd3_pipeline()
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        expected = _generate(pipe, inputs)
        ctl = jano_compile.enable(pipe, lowering="eager")
        images = _generate(pipe, inputs)
    stats = ctl.stats()
    assert len(stats["levels"]) == STEPS and "skip" in stats["levels"]
    assert stats["branches"] == ["default", "default@1"]       # batched CFG: one call per evaluation
    assert psnr(images, expected) > 40


def test_a_scheduler_that_renoises_every_step_is_warned_about():
    pipe, _ = flux_pipeline()
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, stochastic_sampling=True)
    with pytest.warns(UserWarning, match="draws fresh noise into the whole latent at every step"):
        jano_compile.enable(pipe, lowering="eager")


def test_a_pipeline_made_from_an_enabled_one_runs_eagerly_after_disable():
    """from_pipe() after enable() shares the compiled transformer; after disable() on the
    first pipeline it calls the eager transformer (it ran jano on, re-allocating the freed
    caches) and gives the eager images."""
    from diffusers import FluxImg2ImgPipeline
    pipe, inputs = flux_pipeline()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = FluxImg2ImgPipeline.from_pipe(pipe)(**inputs, image=image, strength=0.8, num_inference_steps=STEPS,
                                                       generator=torch.Generator().manual_seed(0)).images
        ctl = jano_compile.enable(pipe, lowering="eager")
        derived = FluxImg2ImgPipeline.from_pipe(pipe)
        jano_compile.disable(pipe)
        calls = ctl.calls
        images = derived(**inputs, image=image, strength=0.8, num_inference_steps=STEPS,
                         generator=torch.Generator().manual_seed(0)).images
    assert ctl.calls == calls and ctl.stats()["cache_bytes"] == 0
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_steps_after_the_schedule_turned_off_read_off_not_manual(monkeypatch):
    """Under enable(), a schedule that turns off (its grid cannot be derived) computes every
    token; its steps are "off" in the levels and the progress bar, not "manual" (no
    set_active() was called)."""
    import jano_compile.auto_policy as auto_policy
    from jano_compile.geometry import GeometryError

    def underivable(module):
        raise GeometryError("a grid this test does not let be derived")
    monkeypatch.setattr(auto_policy, "geometry_for", underivable)
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")
        _generate(pipe, inputs)
    stats = ctl.stats()
    assert "does not let be derived" in stats["auto_disabled"] and stats["mode"] == "auto"
    assert stats["levels"] == ["off"] * STEPS and stats["compute_saved"] == 0.0


def test_after_release_a_bare_loop_at_another_resolution_starts_a_generation():
    """release() restarts the timestep clock at generation 1, which the schedule had seen:
    it kept the last run's analysis, and at another resolution indexed past the grid."""
    model, kwargs, _ = flux(b=1, h=8, w=8)
    small = flux(b=1, h=4, w=4)[1]
    f, ctl = _compiled(model, num_inference_steps=STEPS, **explicit_options(CONFIG))
    expected = _planned_levels()
    with torch.no_grad():
        euler_loop(f, kwargs, steps=STEPS)
        ctl.release()
        euler_loop(f, small, steps=STEPS)
    assert ctl.stats()["levels"] == expected and ctl.schedule.analysis.grid == (1, 4, 4)


def test_a_scheduler_swapped_after_a_generation_under_set_active_starts_on_the_schedule():
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, CONFIG, lowering="eager")

        def take_over(pipe_, i, t, kwargs):
            if i == 5:
                ctl.set_active(torch.tensor([0, 1]))
            return kwargs
        _generate(pipe, inputs, take_over)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        _generate(pipe, inputs)
    expected = _planned_levels()
    assert ctl.stats()["levels"] == expected and ctl.stats()["mode"] == "auto"
