"""How well jano's warm-up analysis predicts where the bundled model keeps changing.

Where jano holds a skipped token's output (the paper recipe) or forecasts it (the default),
the error it makes in a region grows with how much that region's velocity still changes
after the warm-up. For each seed this runs the full model, scores the blocks from the
warm-up latents as jano does (the default recipe's warm-up and block size for FLUX, printed
with the result), and reports the Spearman rank correlation between a block's score and
its later velocity change, sum over steps after warm-up of |v[t+1] - v[t]| (per token,
Euclidean over channels, summed over the block). 1 is a perfect ranking, 0 none.

    python benchmarks/region_prediction.py [--seeds 8] [--steps 50]
    python benchmarks/region_prediction.py --work 0.4 [--forecast-kv]

With `--work`: the estimate that drives the work-budget schedule (periods.py) in the
compiled runtime. At every period assignment after the first, the per-block estimate in
force (built from earlier full steps only) is ranked against the per-block forecast error
the full step just observed (not used to build it; each block measured at the horizon of
its period, per unit of time): Spearman per assignment, averaged per seed, then over seeds.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch

import jano_compile
from jano_compile.periods import ErrorEstimate

from jano_compile.analyzer import analyze
from jano_compile.config import resolve_config
from jano_compile.metrics import psnr
from jano_compile.models import bundled


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--work", type=float, default=None, help="measure the work-budget estimate instead")
    p.add_argument("--forecast-kv", action="store_true")
    p.add_argument("--oracle-horizon", type=int, default=2)
    p.add_argument("--periods", default="1,2,3,6")
    p.add_argument("--first-seed", type=int, default=0, help="1000: the calibration seeds")
    args = p.parse_args(argv)
    if args.work is not None:
        return budget_estimate(args)
    model = bundled()
    config = resolve_config("flux", {})
    grid = (1, *model.grid)
    _, bh, bw = config.block_size_for(grid)
    rows, cols = model.grid
    found = []
    for seed in range(args.seeds):
        noise = model.initial_noise(1, torch.Generator().manual_seed(seed))
        received = [noise[0]]                    # the tokens each step receives, [N, C]
        model.sample([seed % model.num_classes], args.steps, noise=noise,
                     callback=lambda step, t, tokens: received.append(tokens[0].clone()))
        analysis = analyze(received[:config.warmup_steps], grid, config)
        after = torch.stack(received[config.warmup_steps:])          # [steps - W + 1, N, C]
        velocity = after[1:] - after[:-1]
        change = (velocity[1:] - velocity[:-1]).norm(dim=-1).sum(0)  # [N]
        per_block = change.view(rows // bh, bh, cols // bw, bw).sum((1, 3)).flatten()
        found.append(spearman(analysis.block_scores.flatten(), per_block))
        print(f"seed {seed}: Spearman(score, later velocity change) = {found[-1]:.2f}")
    print(f"mean {statistics.fmean(found):.2f}, range {min(found):.2f} .. {max(found):.2f} "
          f"({args.seeds} seeds, {args.steps} steps, warm-up {config.warmup_steps}, block {bh}x{bw} tokens)")


def oracle_rates(velocity: torch.Tensor, sigmas: torch.Tensor, horizon: int) -> torch.Tensor:
    """[steps, N]: each token's order-1 forecast error rate at `horizon` steps on the full
    model's own velocities `velocity` [steps, N, C] (as passes/forecast.py measures it: mean
    |fresh - forecast| over channels per unit of sigma); NaN where the history is short."""
    steps, n, _ = velocity.shape
    rates = torch.full((steps, n), float("nan"), dtype=torch.float64)
    for s in range(2 * horizon, steps):
        a, b = s - horizon, s - 2 * horizon
        slope = (velocity[a] - velocity[b]) / (sigmas[a] - sigmas[b])
        forecast = velocity[a] + slope * (sigmas[s] - sigmas[a])
        rates[s] = ((velocity[s] - forecast).abs().mean(-1) / (sigmas[a] - sigmas[s])).double()
    return rates


def budget_estimate(args) -> None:
    """The work-budget estimate in the compiled run against (a) the next observation and (b)
    a schedule-independent oracle: the full model's own forecast error rates at a fixed
    horizon over the steps from s to the cool-down, for every adaptive step s once."""
    from jano_compile.analyzer import block_nanmean
    from jano_compile.models.bundled import flow_sigmas
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = bundled()
    observations: list = []     # (step, estimate in force from this step on, what was observed)
    calls = [0]
    observe = ErrorEstimate.observe

    def recording(self, block_error):
        before = self.value.clone()
        observe(self, block_error)
        observations.append((calls[0] - 1, before, block_error.double().flatten(), self.value.clone()))
    ErrorEstimate.observe = recording
    options = dict(work=args.work, periods=tuple(int(x) for x in args.periods.split(",")),
                   forecast_kv=args.forecast_kv, num_inference_steps=args.steps, lowering="eager")
    grid = (1, *model.grid)
    sigmas = flow_sigmas(args.steps, 1.0)
    found = {"next": [], "oracle": [], "prior": []}
    quality = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            torch._dynamo.reset()
            f = torch.compile(copy.deepcopy(model.transformer), backend="jano", dynamic=False, options=options)
            ctl = jano_compile.controller(f)

            def counted(**kwargs):
                calls[0] += 1
                return f(**kwargs)
            observations.clear()
            calls[0] = 0
            image = model.sample([seed % model.num_classes], args.steps, torch.Generator().manual_seed(seed),
                                 transformer=counted)
            config = ctl.schedule.config
            block = ctl.schedule.analysis.block_size
            velocities = []

            def recorded(**kwargs):
                out = model.transformer(**kwargs)
                velocities.append(out[0][0].float())
                return out
            reference = model.sample([seed % model.num_classes], args.steps, torch.Generator().manual_seed(seed),
                                     transformer=recorded)
            quality.append(psnr(image, reference))
            rates = oracle_rates(torch.stack(velocities), sigmas, args.oracle_horizon)
            end = args.steps - config.cooldown_steps
            nexts, oracles, priors = [], [], []
            prior = ctl.schedule.analysis.block_scores.flatten().double()
            for step, before, seen, after in observations:
                known = torch.isfinite(before) & torch.isfinite(seen)
                if known.sum() > 2:
                    nexts.append(spearman(before[known], seen[known]))
            # every adaptive step s once: the estimate in force at s (the last one built
            # before s's decision) against the oracle over steps s .. cool-down
            for s_ in range(observations[0][0], end - 1):
                after = [a for step, _, _, a in observations if step <= s_][-1]
                later = rates[s_:end].nanmean(0)
                target = block_nanmean(later.reshape(grid), block).flatten()
                oracles.append(spearman(after, target))
                priors.append(spearman(prior, target))
            found["next"].append(statistics.fmean(nexts))
            found["oracle"].append(statistics.fmean(oracles))
            found["prior"].append(statistics.fmean(priors))
            print(f"seed {seed}: PSNR {quality[-1]:.2f}; Spearman vs next observation {found['next'][-1]:.2f} "
                  f"({' '.join(f'{x:.2f}' for x in nexts)}), vs oracle {found['oracle'][-1]:.2f} "
                  f"({' '.join(f'{x:.2f}' for x in oracles)})")
    finally:
        ErrorEstimate.observe = observe
    print(f"{args.seeds} seeds from {args.first_seed}, work {args.work}, periods {args.periods}, "
          f"forecast_kv {args.forecast_kv}: PSNR mean {statistics.fmean(quality):.2f} (worst {min(quality):.2f}); "
          f"Spearman vs next observation {statistics.fmean(found['next']):.2f} (worst seed {min(found['next']):.2f}), "
          f"vs oracle (horizon {args.oracle_horizon}) {statistics.fmean(found['oracle']):.2f} "
          f"(worst seed {min(found['oracle']):.2f}); the warm-up analysis's scores vs the same oracle "
          f"{statistics.fmean(found['prior']):.2f} (worst seed {min(found['prior']):.2f})")


if __name__ == "__main__":
    main()
