"""Fixed thresholds (the reference rule) against quantile levels, on the bundled model,
under the paper recipe (held outputs, the region levels decide what each step computes;
the default forecast recipe computes every token on a uniform period and ignores levels).

For each seed: a full 50-step generation (the reference) and jano generations with each
rule; reports the fraction of image-token work done, and PSNR / SSIM against the full
model (mean and worst seed). Quality does not depend on the lowering, so this runs the
rewritten graph eagerly.

    python benchmarks/thresholds.py [--seeds 8] [--steps 50] [--rules fixed q40-30]
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

import jano_compile
from jano_compile.metrics import psnr, ssim
from jano_compile.models import bundled

RECIPE = "paper"
RULES = {   # name: (label, options)
    "fixed": ("fixed (reference 0.2 / 0.4)", dict(threshold_mode="fixed")),
    "q40-30": ("quantile (40% static, 30% medium)",
               dict(threshold_mode="quantile", static_fraction=0.4, medium_fraction=0.3)),
    "q60-20": ("quantile (60% static, 20% medium)",
               dict(threshold_mode="quantile", static_fraction=0.6, medium_fraction=0.2)),
    "q30-30": ("quantile (30% static, 30% medium)",
               dict(threshold_mode="quantile", static_fraction=0.3, medium_fraction=0.3)),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rules", nargs="*", default=None, choices=tuple(RULES), metavar="RULE",
                   help="a subset of: " + "; ".join(f"{k} = {label}" for k, (label, _) in RULES.items())
                   .replace("%", "%%"))     # argparse formats help with %
    args = p.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        p.error("--seeds and --steps must be at least 1")
    rules = {RULES[name][0]: RULES[name][1] for name in (args.rules or RULES)}
    model = bundled()
    rows = {name: [] for name in rules}
    schedule = None
    with torch.no_grad():
        for seed in tqdm(range(args.seeds), desc="seeds"):
            cls = seed % model.num_classes
            full = model.sample([cls], args.steps, torch.Generator().manual_seed(seed))[0]
            for name, rule in rules.items():
                torch._dynamo.reset()
                f = torch.compile(model.transformer, backend="jano", dynamic=False,
                                  options={"lowering": "eager", "recipe": RECIPE, **rule})
                ctl = jano_compile.controller(f)
                ctl.set_num_inference_steps(args.steps)
                image = model.sample([cls], args.steps, torch.Generator().manual_seed(seed), transformer=f)[0]
                stats = ctl.stats()
                schedule = schedule or ctl.schedule.config
                rows[name].append((1 - stats["compute_saved"], psnr(image, full), ssim(image, full),
                                   stats["active_fraction_map"]))
    print(f"\nbundled model, {args.steps} steps, {args.seeds} seeds, {RECIPE} recipe: warm-up "
          f"{schedule.warmup_steps}, cool-down {schedule.cooldown_steps}, refresh every "
          f"{schedule.static_interval}, medium every {schedule.medium_interval}\n")
    print("| rule | active tokens (map) | token work done | PSNR mean (worst) | SSIM mean (worst) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        mean = lambda k: sum(x[k] for x in r) / len(r)   # noqa: E731
        print(f"| {name} | {mean(3):.0%} | {mean(0):.0%} | {mean(1):.2f} ({min(x[1] for x in r):.2f}) "
              f"| {mean(2):.3f} ({min(x[2] for x in r):.3f}) |")


if __name__ == "__main__":
    main()
