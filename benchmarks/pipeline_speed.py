"""A whole 50-step generation of the transformer alone (no VAE; the analysis counted):
plain torch.compile against jano with the reference intervals, in one run.

The reference intervals: 6 warm-up and 4 cool-down steps, refresh every 10, medium every 5.
Under the default forecast recipe the steps between are skip steps (no token due: the
forecast alone) and the medium and active ones; under `--recipe paper` (held outputs)
random weights give the analyzer no structure to find, so the quantile rule sets the map
to 30% active, 30% medium, 40% static (10 full + 4 refresh + 4 medium + 32 active steps of
50: about 1.9x at most).

    python benchmarks/pipeline_speed.py [--threads 1] [--device cuda --dtype bfloat16 --flux-dev]
        [--mode reduce-overhead]

The first generation of each (compiles, CUDA-graph captures and all steps) is timed apart.
Timed generations synchronise only at their end, as a pipeline's loop does; one more jano
generation, synchronised after every step, gives the per-step table.

    --recipe paper          held outputs (the paper's reuse) instead of the forecast
    --work 0.4 [--forecast-kv]   per-region periods under a work budget instead of the
                                 reference intervals (the same warm-up and cool-down)
    --shapes static|symbolic   jano's static_shapes option (default: jano's own choice)
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

import jano_compile
from common import (add_device_arg, add_mode_arg, add_shapes_arg, add_size_args, at_least, build_flux, compile_jano, compile_plain, cudagraph_skips,
                    describe, jano_summary, median, shapes_option, size_from_args, sync)

SCHEDULE = dict(warmup_steps=6, cooldown_steps=4, static_interval=10, medium_interval=5,
                threshold_mode="quantile", static_fraction=0.4, medium_fraction=0.3)


def generate(transformer, kwargs, steps, device, ctl=None, per_step: bool = False):
    """Euler loop over timesteps 1 -> 0; returns (seconds, {phase: [step seconds]}). The
    steps are timed (a synchronisation after each) only with `per_step`."""
    x = kwargs["hidden_states"].clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    per_phase = defaultdict(list)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        t = torch.full((x.shape[0],), float(sigmas[i]), device=device, dtype=x.dtype)
        v = transformer(**{**kwargs, "hidden_states": x, "timestep": t})[0]
        x = x + float(sigmas[i + 1] - sigmas[i]) * v
        if not per_step:
            continue
        sync(device)
        phase = ctl.last_call.phase if ctl is not None else "plain"
        per_phase[phase].append(time.perf_counter() - t0)
    sync(device)
    return time.perf_counter() - start, per_phase


def jano_options(args) -> dict:
    """The schedule of the run: the reference one, or the work budget in place of its intervals."""
    options = {**SCHEDULE, "num_inference_steps": args.steps}
    if args.recipe:
        options["recipe"] = args.recipe
    if args.work is not None:
        options = {k: v for k, v in options.items() if k not in ("static_interval", "medium_interval")}
        options["work"] = args.work
    if args.forecast_kv:
        options["forecast_kv"] = True
    return options | shapes_option(args)


def describe_jano(args) -> str:
    recipe = f"{args.recipe or 'forecast'} recipe"
    budget = f"work={args.work}" if args.work is not None else "reference intervals 10/5"
    return (f"{recipe}, {budget}" + (", forecast_kv" if args.forecast_kv else "")
            + (f", {args.shapes} shapes" if args.shapes != "auto" else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_args(p)
    p.add_argument("--steps", type=at_least(2), default=50)
    p.add_argument("--runs", type=at_least(1), default=2, help="generations per method (median reported)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_device_arg(p)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--recipe", choices=["forecast", "paper"], default=None, help="jano recipe (default: forecast)")
    p.add_argument("--work", type=float, default=None,
                   help="a work budget (fraction of image-token work) instead of the reference intervals")
    p.add_argument("--forecast-kv", action="store_true", help="extrapolate skipped tokens' K/V")
    add_shapes_arg(p)
    add_mode_arg(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = size_from_args(args)
    model, kwargs = build_flux(size, 1, getattr(torch, args.dtype), args.device)
    print(f"{describe(size)}, {args.steps} steps, {args.dtype}, {args.device}, mode {args.mode or 'none'}, "
          f"{torch.get_num_threads()} threads")
    with torch.no_grad():
        plain = compile_plain(model, args.mode)
        jano = compile_jano(model, args.mode, jano_options(args))
        ctl = jano_compile.controller(jano)
        print("first generations (compiles included) ...", flush=True)
        first = {"plain": generate(plain, kwargs, args.steps, args.device)[0],
                 "jano": generate(jano, kwargs, args.steps, args.device, ctl)[0]}
        totals = {"plain": [], "jano": []}
        for run in range(args.runs):
            totals["plain"].append(generate(plain, kwargs, args.steps, args.device)[0])
            totals["jano"].append(generate(jano, kwargs, args.steps, args.device, ctl)[0])
            print(f"run {run + 1}/{args.runs}: plain {totals['plain'][-1]:.2f} s, "
                  f"jano {totals['jano'][-1]:.2f} s", flush=True)
        phases = generate(jano, kwargs, args.steps, args.device, ctl, per_step=True)[1]
    stats = ctl.stats()
    plain_s, jano_s = median(totals["plain"]), median(totals["jano"])
    if stats["active_fraction_map"] is None:   # the steps ended before the analysis ran
        print(f"\nregions: no analysis ran in {args.steps} steps (it runs after the warm-up, before the "
              f"cool-down); image-token work skipped {stats['compute_saved']:.0%}")
    else:
        print(f"\nregions: {stats['active_fraction_map']:.0%} active, {stats['medium_fraction_map']:.0%} medium; "
              f"analysis {stats['analysis_seconds'] * 1e3:.1f} ms; image-token work skipped "
              f"{stats['compute_saved']:.0%}")
    print("\n| | seconds per generation | speedup |\n|---|---|---|")
    print(f"| plain torch.compile | {plain_s:.2f} | 1.00x |")
    print(f"| jano ({describe_jano(args)}) | {jano_s:.2f} | {plain_s / jano_s:.2f}x |")
    print("\n| step kind (one more generation, synchronised per step) | steps per generation | "
          "median step (ms) |\n|---|---|---|")
    counts = defaultdict(int)
    for phase in stats["levels"]:
        counts[phase] += 1
    for phase in dict.fromkeys(stats["levels"]):   # in the order they first ran
        if phases.get(phase):
            print(f"| {phase} | {counts[phase]} | {median(phases[phase]) * 1e3:.1f} |")
    print(f"\nfirst generation (compiles, captures and {args.steps} steps): "
          f"plain {first['plain']:.1f} s, jano {first['jano']:.1f} s")
    print(jano_summary(stats))
    print(f"cudagraph skips: {cudagraph_skips()}")


if __name__ == "__main__":
    main()
