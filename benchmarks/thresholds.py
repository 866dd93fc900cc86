"""Fixed thresholds (the reference rule) against quantile levels, on the bundled model.

For each seed: a full 50-step generation (the reference) and jano generations with each
rule; reports the fraction of image-token work done, and PSNR / SSIM against the full
model (mean and worst seed). Quality does not depend on the lowering, so this runs the
rewritten graph eagerly.

    python benchmarks/thresholds.py [--seeds 8] [--steps 50]
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

import jano_compile
from jano_compile.metrics import psnr, ssim
from jano_compile.models import bundled

RULES = {
    "fixed (reference 0.2 / 0.4)": dict(threshold_mode="fixed"),
    "quantile (40% static, 30% medium)": dict(threshold_mode="quantile", static_fraction=0.4, medium_fraction=0.3),
    "quantile (60% static, 20% medium)": dict(threshold_mode="quantile", static_fraction=0.6, medium_fraction=0.2),
    "quantile (30% static, 30% medium)": dict(threshold_mode="quantile", static_fraction=0.3, medium_fraction=0.3),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rules", nargs="*", default=None,     # argparse formats help with %: escape the rules'
                   help="subset of: " + ", ".join(RULES).replace("%", "%%"))
    args = p.parse_args(argv)
    rules = {name: RULES[name] for name in (args.rules or RULES)}
    model = bundled()
    rows = {name: [] for name in rules}
    with torch.no_grad():
        for seed in tqdm(range(args.seeds), desc="seeds"):
            cls = seed % model.num_classes
            full = model.sample([cls], args.steps, torch.Generator().manual_seed(seed))[0]
            for name, rule in rules.items():
                torch._dynamo.reset()
                f = torch.compile(model.transformer, backend="jano", dynamic=False,
                                  options={"lowering": "eager", **rule})
                ctl = jano_compile.controller(f)
                ctl.set_num_inference_steps(args.steps)
                image = model.sample([cls], args.steps, torch.Generator().manual_seed(seed), transformer=f)[0]
                stats = ctl.stats()
                rows[name].append((1 - stats["compute_saved"], psnr(image, full), ssim(image, full),
                                   stats["active_fraction_map"]))
    print(f"\nbundled model, {args.steps} steps, {args.seeds} seeds, FLUX preset schedule\n")
    print("| rule | active tokens (map) | token work done | PSNR mean (worst) | SSIM mean (worst) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        mean = lambda k: sum(x[k] for x in r) / len(r)   # noqa: E731
        print(f"| {name} | {mean(3):.0%} | {mean(0):.0%} | {mean(1):.2f} ({min(x[1] for x in r):.2f}) "
              f"| {mean(2):.3f} ({min(x[2] for x in r):.3f}) |")


if __name__ == "__main__":
    main()
