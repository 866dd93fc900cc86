"""How a static graph's step time grows with its image-token count n: plain Inductor on
the T text + n image tokens of a FLUX-architecture transformer, for n in a range, medians
of back-to-back calls. Under CUDA graphs or static shapes the runtime pads index sets
other than the schedule's regions and the first two lengths a user sets up to a multiple
of N / `static_buckets` (default `options.STATIC_BUCKETS`); where the time is flat between
two lengths, padding up to the larger one costs nothing, so this table is what the bucket
size is chosen from. (Plain Inductor only: `--mode` is the mode it compiles with.)

    python benchmarks/bucket_sweep.py --flux-dev --layers 2 --single-layers 4 --dtype bfloat16 \\
        --device cuda --mode reduce-overhead --lengths 1024:1344:32
"""
from __future__ import annotations

import argparse

import torch

from common import (add_device_arg, add_mode_arg, add_size_args, build_flux, compile_plain, describe, median,
                    only_tokens, size_from_args, time_in_a_row)


def lengths_arg(text: str) -> list[int]:
    """"a:b:s" -> range(a, b + 1, s); "a,b,c" -> [a, b, c]."""
    if ":" in text:
        start, stop, step = (int(x) for x in text.split(":"))
        return list(range(start, stop + 1, step))
    return [int(x) for x in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_args(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_device_arg(p)
    p.add_argument("--lengths", type=lengths_arg, default=lengths_arg("128:512:64"),
                   help='image-token counts: "start:stop:step" or "n1,n2,..."')
    p.add_argument("--calls", type=int, default=20, help="calls per back-to-back timing")
    add_mode_arg(p)
    args = p.parse_args(argv)
    size = size_from_args(args)
    n_all = size.grid ** 2
    if not args.lengths or min(args.lengths) < 1 or max(args.lengths) > n_all:
        p.error(f"--lengths must lie in [1, {n_all}] (the model's image tokens)")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(args.lengths) + 1)
    model, kwargs = build_flux(size, 1, getattr(torch, args.dtype), args.device)
    print(f"{describe(size)}, {args.dtype}, {args.device}, mode {args.mode or 'none'}, torch {torch.__version__}")
    plain = compile_plain(model, args.mode)
    rows = []
    with torch.no_grad():
        for n in args.lengths:
            inputs = only_tokens(kwargs, torch.arange(n))
            call = lambda inputs=inputs: plain(**inputs)   # noqa: E731
            for _ in range(3):   # compile, warm up, capture
                call()
            seconds = median([time_in_a_row(call, args.calls, args.device) for _ in range(5)])
            rows.append((n, seconds))
            print(f"n {n}: {seconds * 1e3:.3f} ms", flush=True)
    print("\n| image tokens n | T + n | step (ms) | per image token over the previous row (us) |\n|---|---|---|---|")
    previous = None
    for n, seconds in rows:
        slope = "" if previous is None else f"{(seconds - previous[1]) / (n - previous[0]) * 1e6:.2f}"
        print(f"| {n} | {size.text + n} | {seconds * 1e3:.3f} | {slope} |")
        previous = (n, seconds)


if __name__ == "__main__":
    main()
