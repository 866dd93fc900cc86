"""The runtime boundary: configuration precedence, the step clocks, and what users meet on
models or shapes jano does not rewrite (never a crash, always a reason)."""
import warnings

import pytest
import torch
from torch import nn

import jano_compile
from jano_compile.clock import SchedulerClock, TimestepClock, Tick
from jano_compile.config import PRESETS, JanoConfig, explicit_options
from jano_compile.schedule import step_phase

from .models import flux
from .pipelines import flux_pipeline
from .toy import ToyDiT

STEPS = 12


# ----------------------------------------------------------------------------- configuration
def test_explicit_options_of_a_config_are_the_fields_passed():
    assert explicit_options(JanoConfig(cooldown_steps=3)) == {"cooldown_steps": 3}
    assert explicit_options(JanoConfig(recipe="paper")) == {"recipe": "paper"}
    assert explicit_options(JanoConfig(6, 3)) == {"warmup_steps": 6, "cooldown_steps": 3}
    assert explicit_options({"warmup_steps": 9}) == {"warmup_steps": 9}
    assert explicit_options(None) == {}
    with pytest.raises(TypeError, match="JanoConfig or a dict"):
        explicit_options(["warmup_steps"])


@pytest.mark.parametrize("config", [JanoConfig(recipe="paper", cooldown_steps=3),
                                    {"recipe": "paper", "cooldown_steps": 3}])
def test_enable_applies_the_family_preset_where_the_config_is_silent(config):
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, config, lowering="eager")
        pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    resolved = ctl.schedule.config
    flux_preset = PRESETS["paper"]["flux"]
    assert resolved.cooldown_steps == 3                                   # explicit
    assert resolved.warmup_steps == flux_preset["warmup_steps"] != JanoConfig(recipe="paper").warmup_steps
    assert resolved.d_strength == JanoConfig().d_strength                 # default
    assert resolved.num_inference_steps == STEPS                          # learned from the scheduler


def test_two_identical_generations_give_identical_images():
    pipe, inputs = flux_pipeline()
    config = JanoConfig(warmup_steps=3, cooldown_steps=2, static_interval=4, medium_interval=2,
                        active_interval=1)
    images, levels = [], []
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, config, lowering="eager")
        for _ in range(2):
            out = pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
            images.append(out.images)
            levels.append(ctl.stats()["levels"])
    expected = [step_phase(s, STEPS, JanoConfig(**explicit_options(config), num_inference_steps=STEPS)).value
                for s in range(STEPS)]
    assert levels[0] == levels[1] == expected          # the first generation has its cool-down too
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"cuda_graphs": True}], ids=["plain-calls", "static-calls"])
def test_generations_in_and_out_of_inference_mode_agree(options):
    """Caches, the step-time buffer and static-call buffers made under inference_mode are
    written in place by a later generation outside it (and back): no error, same outputs."""
    model, kwargs, _ = flux()
    model.eval()
    times = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    f = torch.compile(model, backend="jano", dynamic=False,
                      options={"lowering": "eager", "num_inference_steps": len(times), **options})

    def generation():
        return [f(**{**kwargs, "timestep": torch.tensor([t])})[0] for t in times]

    outputs = []
    for grad_mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with grad_mode():
            outputs.append(generation())
    assert "skip" in jano_compile.controller(f).stats()["levels"]
    with torch.no_grad():
        first = model(**{**kwargs, "timestep": torch.tensor([times[0]])})[0]
    torch.testing.assert_close(outputs[0][0], first, rtol=1e-5, atol=1e-5)
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- clocks
def test_timestep_clock_counts_steps_branches_and_generations():
    clock = TimestepClock()
    ticks = [clock.tick(t) for t in (1.0, 1.0, 0.5, 0.5, 0.2, 1.0)]
    assert ticks == [Tick(1, 0, 0), Tick(1, 0, 1), Tick(1, 1, 0), Tick(1, 1, 1), Tick(1, 2, 0), Tick(2, 0, 0)]


def test_a_rising_timestep_counts_steps_not_generations():
    """Models that take 1 - sigma (Lumina2, Z-Image, Ideogram4): time rises within a run;
    the first change sets the direction, a move back starts a new generation."""
    clock = TimestepClock()
    ticks = [clock.tick(t) for t in (0.0, 0.0, 0.3, 0.7, 0.7, 0.0, 0.5)]
    assert ticks == [Tick(1, 0, 0), Tick(1, 0, 1), Tick(1, 1, 0), Tick(1, 2, 0), Tick(1, 2, 1),
                     Tick(2, 0, 0), Tick(2, 1, 0)]


def test_a_warm_up_call_at_another_timestep_costs_one_generation_only():
    """A call at t = 0 before a falling loop (a compile warm-up) first looks like rising
    time; every generation learns its own direction, so only that one is cut short."""
    clock = TimestepClock()
    ticks = [clock.tick(t) for t in (0.0, 1.0, 0.9, 0.8, 0.7, 1.0, 0.9, 0.8)]
    assert ticks == [Tick(1, 0, 0), Tick(1, 1, 0), Tick(2, 0, 0), Tick(2, 1, 0), Tick(2, 2, 0),
                     Tick(3, 0, 0), Tick(3, 1, 0), Tick(3, 2, 0)]


def test_scheduler_clock_counts_what_the_scheduler_says():
    clock = SchedulerClock()
    clock.start_generation()
    first = [clock.tick(), clock.tick()]
    clock.end_step()
    second = clock.tick()
    clock.start_generation()
    assert first == [Tick(1, 0, 0), Tick(1, 0, 1)] and second == Tick(1, 1, 0)
    assert clock.tick() == Tick(2, 0, 0)


def test_scheduler_clock_takes_scheduler_steps_at_one_timestep_for_evaluations_of_one_step():
    """Heun's scheduler steps at timesteps t0, t1, t1, t2 (two model evaluations at each time
    after the first, on different latents): three steps, the second evaluation of a step its
    own branch (as a second CFG branch would be), the time of each step its first's."""
    from jano_compile.clock import evaluations
    from jano_compile.policy import branch_of_tick
    clock = SchedulerClock()
    clock.start_generation([1.0, 0.6, 0.3], evaluations([1000.0, 600.0, 600.0, 300.0]))
    ticks = []
    for _ in range(4):
        ticks.append(clock.tick())
        clock.end_step()
    ticks.append(clock.tick())      # a call past the announced timesteps: a step of its own
    assert ticks == [Tick(1, 0, 0, 1.0), Tick(1, 1, 0, 0.6), Tick(1, 1, 0, 0.6, 1), Tick(1, 2, 0, 0.3),
                     Tick(1, 3, 0)]
    assert [branch_of_tick(t, None) for t in ticks[:3]] == ["default", "default", "default@1"]
    assert branch_of_tick(ticks[2], "cond") == "cond@1"


def test_scheduler_clock_keeps_steps_apart_whose_timesteps_are_equal():
    """A bf16 pipeline can hand the model equal timesteps on consecutive steps; driven by the
    scheduler, the controller still counts them as steps, not as CFG branches."""
    model, kwargs, n = flux(b=1, h=4, w=4)
    model.eval()
    options = dict(recipe="paper", warmup_steps=3, cooldown_steps=2, static_interval=4, medium_interval=2,
                   num_inference_steps=STEPS, lowering="eager")
    f = torch.compile(model, backend="jano", dynamic=False, options=options)
    ctl = jano_compile.controller(f)
    clock = SchedulerClock()
    ctl.auto_policy.scheduler_clock = clock
    clock.start_generation()
    with torch.no_grad():
        for _ in range(STEPS):
            f(**kwargs)                 # the same timestep every step
            clock.end_step()
    stats = ctl.stats()
    config = JanoConfig(**{k: v for k, v in options.items() if k != "lowering"})
    assert stats["levels"] == [step_phase(s, STEPS, config).value for s in range(STEPS)]
    assert stats["branches"] == ["default"] and stats["compute_saved"] > 0


# ----------------------------------------------------------------------------- not rewritten
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x):
        return self.net(x)


def test_a_module_that_is_no_dit_warns_runs_and_says_why():
    model = MLP().eval()
    f = torch.compile(model, backend="jano", options={"lowering": "eager"})
    ctl = jano_compile.controller(f)
    x = torch.randn(2, 8)
    with torch.no_grad(), pytest.warns(UserWarning, match="jano"):
        out = f(x)
    torch.testing.assert_close(out, model(x))
    stats = ctl.stats()
    assert not stats["rewritten"] and stats["fallback_reason"]


def test_set_active_on_a_model_that_was_not_rewritten_warns_once_and_runs_full():
    model = ToyDiT(token_cumsum=True).eval()        # a running sum over tokens: not rewritable
    f = torch.compile(model, backend="jano", dynamic=False, options={"lowering": "eager"})
    ctl = jano_compile.controller(f)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f(x)
    with pytest.warns(UserWarning, match="not rewritten.*cumsum"):
        ctl.set_active(torch.tensor([1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # the second time: no warning
        ctl.refresh()
        ctl.set_active(torch.tensor([1, 2]))
        with torch.no_grad():
            out = f(x)[0]
    torch.testing.assert_close(out, model(x)[0])
    stats = ctl.stats()
    assert stats["full_calls"] == stats["calls"] == 2 and "cumsum" in stats["fallback_reason"]


@pytest.mark.parametrize("dynamic", [None, True])
def test_changing_shapes_with_symbolic_dynamo_graphs_run_on_inductor(dynamic):
    """dynamic=None: the third shape gets a symbolic graph (it crashed when the fallback was
    lowered with the first call's real tensors); dynamic=True: symbolic from the start."""
    model = ToyDiT().eval()
    f = torch.compile(model, backend="jano", dynamic=dynamic)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in (1, 2, 3):
            x = torch.randn(b, 4, 8, 8)
            torch.testing.assert_close(f(x)[0], model(x)[0], atol=1e-4, rtol=1e-4)
    stats = jano_compile.controller(f).stats()
    assert not stats["rewritten"] and "dynamic=False" in stats["fallback_reason"]
    assert stats["fallback_reason"].count("symbolic shapes") == 1


def test_under_enable_the_forecast_time_is_the_schedulers_sigma():
    """A flow-matching scheduler's sigmas (fp32) are the forecast's time axis: the history
    records them, not step indices and not the (bf16-rounded) timesteps."""
    pipe, inputs = flux_pipeline()
    with torch.no_grad():
        ctl = jano_compile.enable(pipe, lowering="eager")
        pipe(**inputs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    sigmas = set(pipe.scheduler.sigmas[:STEPS].float().tolist())
    (graph,) = ctl._graphs.values()
    (branch,) = ctl.stats()["branches"]                        # "cond", from cache_context
    state = ctl.store.state(id(graph), branch, graph.signature)
    times = [t for t, spec in zip(state.tensors, graph.signature.states) if spec.role.value == "history_time"]
    recorded = set(times[0].tolist())
    assert recorded <= sigmas and len(recorded) == 1          # the last computed step: every token
    assert "skip" in ctl.stats()["levels"]


def test_sigmas_are_used_only_where_they_are_flow_matching_times():
    import diffusers as D
    from jano_compile.clock import evaluations
    from jano_compile.scheduler_drive import _sigmas, _timesteps

    def sigmas(scheduler, begin=0):
        timesteps = _timesteps(scheduler)[begin:]
        return _sigmas(scheduler, list(range(begin, begin + len(timesteps))), evaluations(timesteps))
    flow = D.FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(10)
    assert sigmas(flow) == pytest.approx(flow.sigmas[:10].tolist())
    assert sigmas(flow, 4) == pytest.approx(flow.sigmas[4:10].tolist())      # img2img from step 4
    heun = D.FlowMatchHeunDiscreteScheduler()      # timesteps t0, t1, t1, t2, t2, ...: two evaluations a step
    heun.set_timesteps(10)
    assert len(heun.timesteps) == 19 and evaluations(_timesteps(heun))[:5] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert sigmas(heun) == pytest.approx(heun.sigmas[[0, *range(1, 19, 2)]].tolist())
    ddpm = D.DPMSolverMultistepScheduler()
    ddpm.set_timesteps(10)
    assert sigmas(ddpm) is None        # VP sigmas exceed 1
    ddim = D.DDIMScheduler()
    ddim.set_timesteps(10)
    assert sigmas(ddim) is None        # no sigmas
