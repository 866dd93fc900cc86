"""Choose the forecast recipe's defaults on calibration seeds of the bundled model (never on
the seeds quality_speed.py reports): uniform refresh period, warm-up, cool-down and order,
jano's eager lowering, PSNR against the full model.

    python benchmarks/forecast_calibration.py [--seeds 1000,1001,1002,1003] [--steps 50] [--shift 3]
    python benchmarks/forecast_calibration.py --work 0.4,0.5 --period-sets 1-2-4-8,1-2-3-6

With `--work`: the work-budget schedule (per-region periods from measured forecast error,
periods.py) instead of uniform periods, over work values and sets of periods.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import warnings

import torch
from tqdm import tqdm

import jano_compile
from jano_compile.metrics import psnr
from jano_compile.models import bundled


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="1000,1001,1002,1003")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shift", type=float, default=1.0, help="the flow's time shift (sample(shift=...))")
    p.add_argument("--warmups", default="3,4,6")
    p.add_argument("--periods", default="2,3,4")
    p.add_argument("--cooldowns", default="1,2")
    p.add_argument("--orders", default="1,2")
    p.add_argument("--work", default="", help="comma-separated work budgets: the work-budget schedule")
    p.add_argument("--period-sets", default="1-2-4-8", help="with --work: sets of periods, e.g. 1-2-4-8,1-2-3-6")
    p.add_argument("--forecast-kv", action="store_true", help="extrapolate skipped tokens' K/V too")
    args = p.parse_args(argv)
    ints = lambda text: [int(x) for x in text.split(",")]   # noqa: E731
    seeds = ints(args.seeds)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = bundled()
    with torch.no_grad():
        references = {s: model.sample([s % model.num_classes], args.steps, torch.Generator().manual_seed(s),
                                      shift=args.shift)
                      for s in seeds}
        if args.work:
            sets = [tuple(int(p) for p in text.split("-")) for text in args.period_sets.split(",")]
            schedules = [(dict(work=float(w), periods=ps), f"work {w}, periods {'/'.join(map(str, ps))}")
                         for w in args.work.split(",") for ps in sets]
        else:
            schedules = [(dict(static_interval=p, medium_interval=p, active_interval=p), str(p))
                         for p in ints(args.periods)]
        grid = list(itertools.product(ints(args.warmups), schedules, ints(args.cooldowns), ints(args.orders)))
        print("| warm-up | schedule | cool-down | order | token work | PSNR mean (worst) |\n|---|---|---|---|---|---|")
        for warmup, (schedule, period), cooldown, order in tqdm(grid, desc="settings", leave=False):
            torch._dynamo.reset()
            options = dict(warmup_steps=warmup, cooldown_steps=cooldown, forecast_order=order,
                           num_inference_steps=args.steps, lowering="eager", forecast_kv=args.forecast_kv,
                           **schedule)
            f = torch.compile(copy.deepcopy(model.transformer), backend="jano", dynamic=False, options=options)
            ctl = jano_compile.controller(f)
            quality, work = [], []
            for seed in seeds:
                image = model.sample([seed % model.num_classes], args.steps, torch.Generator().manual_seed(seed),
                                     transformer=f, shift=args.shift)
                quality.append(psnr(image, references[seed]))
                work.append(1 - ctl.stats()["compute_saved"])
            tqdm.write(f"| {warmup} | {period} | {cooldown} | {order} | {statistics.fmean(work):.0%} "
                       f"| {statistics.fmean(quality):.2f} ({min(quality):.2f}) |")


if __name__ == "__main__":
    main()
