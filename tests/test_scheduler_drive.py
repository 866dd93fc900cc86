"""enable()'s step clocks as the scheduler drives them (scheduler_drive.py): loops written
here as diffusers' pipelines write theirs, with the scheduler's own state as the reference."""
import copy
import pickle

import diffusers as D
import pytest
import torch

import jano_compile
from jano_compile.clock import SchedulerClock
from jano_compile.controller import Controller
from jano_compile.metrics import psnr
from jano_compile.scheduler_drive import WATCHED, Expert, SchedulerDrive

from .pipelines import eager_and_jano, flux_pipeline, wan_pipeline

STEPS = 10


class _Pipe:
    """What SchedulerDrive reads of a pipeline: its scheduler (and no expert split)."""
    def __init__(self, scheduler):
        self.scheduler = scheduler


def _driven(scheduler):
    """A controller whose clock `scheduler` drives, as enable() sets it up."""
    ctl = Controller()
    expert = Expert("transformer", torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), ctl, SchedulerClock())
    drive = SchedulerDrive(_Pipe(scheduler), [expert], lambda obj, name, value: obj.__dict__.__setitem__(name, value))
    return ctl, expert.clock, drive


def _step(scheduler, t, sample):
    return scheduler.step(torch.zeros_like(sample), t, sample, return_dict=False)[0]


@pytest.mark.parametrize("scheduler", [D.FlowMatchEulerDiscreteScheduler(), D.DDIMScheduler()],
                         ids=["step_index", "no_step_index"])
def test_a_loop_that_cuts_the_timesteps_is_a_generation_of_the_steps_it_runs(scheduler):
    """Video-to-video (CogVideoX: DDIM, Wan: flow-match Euler) slices `timesteps[t_start:]`
    after set_timesteps and never calls set_begin_index: the generation is the steps run,
    whether the scheduler keeps a step index or not (then the first step's timestep is
    looked up once)."""
    ctl, clock, _ = _driven(scheduler)
    scheduler.set_timesteps(STEPS)
    assert ctl.auto_policy.num_inference_steps == STEPS
    sample, seen = torch.randn(1, 4), []
    for t in scheduler.timesteps[4:]:
        seen.append(clock.tick().step)
        sample = _step(scheduler, t, sample)
    assert seen == list(range(STEPS - 4)) and ctl.auto_policy.num_inference_steps == STEPS - 4


def test_a_loop_that_steps_twice_and_rewinds_the_index_counts_one_step():
    """Cosmos 1.0: `step` for the x0 estimate, `_step_index -= 1`, then the real `step`:
    one step of the clock per model evaluation, as the scheduler's index says."""
    scheduler = D.FlowMatchEulerDiscreteScheduler()
    ctl, clock, _ = _driven(scheduler)
    scheduler.set_timesteps(STEPS)
    sample, seen = torch.randn(1, 4), []
    for t in scheduler.timesteps:
        seen.append(clock.tick().step)
        _step(scheduler, t, sample)
        scheduler._step_index -= 1
        sample = _step(scheduler, t, sample)
    assert seen == list(range(STEPS)) and ctl.auto_policy.num_inference_steps == STEPS


def test_copies_of_the_driving_scheduler_step_on_their_own_and_leave_the_clock_alone():
    """SkyReels-V2's diffusion forcing deep-copies the scheduler per frame block, LTX-2 for
    its audio: a copy is a plain scheduler (its `step` ran the original's before, on the
    original's state); copy.copy and pickle give the same."""
    pipe, _ = flux_pipeline()
    jano_compile.enable(pipe, lowering="eager")
    scheduler, clock = pipe.scheduler, jano_compile.controller(pipe.transformer).auto_policy.scheduler_clock
    scheduler.set_timesteps(STEPS)
    for clone in (copy.deepcopy(scheduler), copy.copy(scheduler), pickle.loads(pickle.dumps(scheduler))):
        assert not set(vars(clone)) & set(WATCHED)
        _step(clone, clone.timesteps[0], torch.randn(1, 4))
        assert (clone.step_index, scheduler.step_index, clock.step) == (1, None, 0)
    jano_compile.disable(pipe)


def test_video_to_video_ends_with_the_cool_down_on_the_steps_it_runs():
    """Wan video-to-video at strength 0.5 runs the last half of the timesteps: the schedule
    is placed on those (warm-up first, the last step computed in full; before, it was
    placed on all 16 and the last step run was forecast), close to the eager pipeline (29 dB
    here: this tiny random Wan gives 28-42 dB between seeds, with or without the fix)."""
    base, inputs = wan_pipeline()
    pipe = D.WanVideoToVideoPipeline(tokenizer=None, text_encoder=None, vae=base.vae, scheduler=base.scheduler,
                                     transformer=base.transformer)
    video = [torch.rand(3, inputs["height"], inputs["width"]) for _ in range(inputs["num_frames"])]
    inputs = {**{k: v for k, v in inputs.items() if k != "num_frames"}, "video": video, "strength": 0.5}
    steps = 16
    eager, fast, _, (stats,) = eager_and_jano(pipe, inputs, steps)
    levels = stats["levels"]
    assert len(levels) == steps // 2 and levels[0] == "warmup" and levels[-1] == "cooldown", levels
    assert "skip" in levels and psnr(fast, eager) > 25.0


def test_a_scheduler_whose_timesteps_end_at_the_final_time_runs_one_step_fewer():
    """SCM (Sana Sprint) makes N + 1 timesteps, the last the final time, where the pipeline
    does not call the model: the generation is N steps, so the cool-down falls on the last
    step run. It re-noises the latent every step: said at enable()."""
    scheduler = D.SCMScheduler()
    with pytest.warns(UserWarning, match="SCMScheduler draws fresh noise"):
        ctl, _, _ = _driven(scheduler)
    scheduler.set_timesteps(2)
    assert len(scheduler.timesteps) == 3 and ctl.auto_policy.num_inference_steps == 2


def test_timesteps_without_values_start_a_generation_of_unknown_length():
    """A pipeline whose execution device is "meta" (a transformer not loaded yet) sets
    timesteps without values: jano's hook lets the pipeline fail where it fails without
    jano, rather than first, inside the hook."""
    scheduler = D.FlowMatchEulerDiscreteScheduler()
    ctl, clock, _ = _driven(scheduler)
    scheduler.set_timesteps(STEPS, device="meta")
    assert ctl.auto_policy.num_inference_steps is None and clock.tick().step == 0
