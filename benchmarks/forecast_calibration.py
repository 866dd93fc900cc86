"""Choose the forecast recipe's defaults on calibration seeds of the bundled model (never on
the seeds quality_speed.py reports): uniform refresh period, warm-up, cool-down and order,
jano's eager lowering, PSNR against the full model.

    python benchmarks/forecast_calibration.py [--seeds 1000,1001,1002,1003] [--steps 50]
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
    p.add_argument("--warmups", default="3,4,6")
    p.add_argument("--periods", default="2,3,4")
    p.add_argument("--cooldowns", default="1,2")
    p.add_argument("--orders", default="1,2")
    args = p.parse_args(argv)
    ints = lambda text: [int(x) for x in text.split(",")]   # noqa: E731
    seeds = ints(args.seeds)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = bundled()
    with torch.no_grad():
        references = {s: model.sample([s % model.num_classes], args.steps, torch.Generator().manual_seed(s))
                      for s in seeds}
        grid = list(itertools.product(ints(args.warmups), ints(args.periods), ints(args.cooldowns), ints(args.orders)))
        print("| warm-up | period | cool-down | order | token work | PSNR mean (worst) |\n|---|---|---|---|---|---|")
        for warmup, period, cooldown, order in tqdm(grid, desc="settings", leave=False):
            torch._dynamo.reset()
            options = dict(warmup_steps=warmup, cooldown_steps=cooldown, static_interval=period,
                           medium_interval=period, active_interval=period, forecast_order=order,
                           num_inference_steps=args.steps, lowering="eager")
            f = torch.compile(copy.deepcopy(model.transformer), backend="jano", dynamic=False, options=options)
            ctl = jano_compile.controller(f)
            quality, work = [], []
            for seed in seeds:
                image = model.sample([seed % model.num_classes], args.steps, torch.Generator().manual_seed(seed),
                                     transformer=f)
                quality.append(psnr(image, references[seed]))
                work.append(1 - ctl.stats()["compute_saved"])
            tqdm.write(f"| {warmup} | {period} | {cooldown} | {order} | {statistics.fmean(work):.0%} "
                       f"| {statistics.fmean(quality):.2f} ({min(quality):.2f}) |")


if __name__ == "__main__":
    main()
