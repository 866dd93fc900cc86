"""Per-step time of a FLUX-architecture transformer: plain torch.compile (Inductor) against
jano at several fractions of active image tokens, in one run, medians of several runs.

    python benchmarks/step_speed.py                       # CPU size: ~1 s per full step here
    python benchmarks/step_speed.py --flux-dev --dtype bfloat16 --device cuda [--layers 5 --single-layers 10]

Rounds alternate plain and jano steps so that machine noise hits both alike.
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

import jano_compile
from common import (add_size_args, build_flux, describe, jano_step, median, sampled_index,
                    size_from_args, time_call)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_args(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fractions", default="1.0,0.6,0.3,0.1")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--steps", type=int, default=2, help="steps per round and setting")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--recipe", choices=["forecast", "paper"], default=None,
                   help="jano recipe (paper: held outputs, no forecast history at the exit)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    size = size_from_args(args)
    dtype = getattr(torch, args.dtype)
    model, kwargs = build_flux(size, args.batch, dtype, args.device)
    n = size.grid * size.grid
    fractions = [float(f) for f in args.fractions.split(",")]
    print(f"{describe(size)}, batch {args.batch}, {args.dtype}, {args.device}, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}")

    with torch.no_grad():
        plain = torch.compile(model, backend="inductor", dynamic=False)
        jano = torch.compile(model, backend="jano", dynamic=False,
                             options={"recipe": args.recipe} if args.recipe else None)
        ctl = jano_compile.controller(jano)
        for name, fn in (("plain Inductor", plain), ("jano", jano)):
            print(f"compiling {name} ...", flush=True)
            fn(**kwargs)
            fn(**kwargs)
        indices = {f: sampled_index(n, f) for f in fractions}
        step = {f: (lambda f=f: jano_step(ctl, jano, kwargs, indices[f], n)) for f in fractions}
        step[min(fractions)]()  # warm the partial path once
        times = {"plain": []} | {f: [] for f in fractions}
        for _ in tqdm(range(args.rounds), desc="rounds"):
            times["plain"] += time_call(lambda: plain(**kwargs), args.steps, args.device)
            for f in fractions:
                times[f] += time_call(step[f], args.steps, args.device)
    stats = ctl.stats()
    assert stats["rewritten"], stats["fallback_reason"]
    base = median(times["plain"])
    print(f"\njano compiles: {stats['compiles']} (one graph for every fraction)\n")
    print("| setting | active image tokens | step time (ms) | ratio to plain |")
    print("|---|---|---|---|")
    print(f"| plain torch.compile (Inductor) | {n} | {base * 1e3:.1f} | 1.00x |")
    for f in fractions:
        t = median(times[f])
        label = "jano, refresh (100%)" if f >= 1 else f"jano, {round(f * 100)}% active"
        print(f"| {label} | {len(indices[f])} | {t * 1e3:.1f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
