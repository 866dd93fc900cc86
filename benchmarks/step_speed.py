"""Per-step time of a FLUX-architecture transformer: plain torch.compile (Inductor) against
jano at several fractions of active image tokens, in one run, medians of several runs.

    python benchmarks/step_speed.py                       # CPU size: ~1 s per full step here
    python benchmarks/step_speed.py --flux-dev --dtype bfloat16 --device cuda [--layers 5 --single-layers 10]
        [--mode reduce-overhead] [--shapes static|symbolic] [--recipe paper]

Plain and jano take turns call by call (and block by block for the back-to-back timings,
each round starting at another setting), so that machine noise and a GPU clock that drops
under sustained load hit every setting alike. Each step is timed between two
synchronisations, and again as calls issued back to back (one synchronisation at the end,
as a sampling loop runs: host work overlaps the device's). Each partial
fraction f also gets its bound: n = f * N active image tokens cannot cost less than a
static-shape graph with T + n queries against T + N keys (T text tokens). It is measured
as plain Inductor on only the T + n tokens, plus for each attention layer the extra time of
T + n queries against T + N keys over T + n keys (scaled_dot_product_attention compiled by
Inductor, as inside a graph; `--eager-attention` times it eagerly, as earlier runs did),
each layer reading its own K/V as a graph's layers do (before 2026-11-27 one K/V served every
call and stayed in cache: the 10% bound came out ~2% low on this CPU); the bound graph is
timed both ways too, so each jano time has a bound timed alike.
On CUDA it also reports the peak memory of plain and of jano, each alone.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from tqdm import tqdm

import jano_compile
from common import (add_device_arg, add_mode_arg, add_shapes_arg, add_size_args, at_least, build_flux, compile_jano, compile_plain,
                    cudagraph_skips, describe, first_call_seconds, interleaved_timings, jano_step,
                    jano_summary, median, mib, only_tokens, peak_memory, sampled_index, shapes_option,
                    fraction_list, size_from_args, time_call)

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_args(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_device_arg(p)
    p.add_argument("--fractions", type=fraction_list, default=fraction_list("1.0,0.6,0.3,0.1"),
                   help="active-token fractions, each in (0, 1] (default 1.0,0.6,0.3,0.1)")
    p.add_argument("--rounds", type=at_least(1), default=5, help="timed rounds (median reported)")
    p.add_argument("--steps", type=at_least(1), default=2, help="steps per round and setting")
    p.add_argument("--in-a-row", type=at_least(1), default=5, help="calls per back-to-back timing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--recipe", choices=["forecast", "paper"], default=None,
                   help="jano recipe (paper: held outputs, no forecast history at the exit)")
    add_shapes_arg(p)
    p.add_argument("--no-bound", action="store_true",
                   help="skip the bound graphs (one plain compile per partial fraction; for the full depth)")
    p.add_argument("--full-through-partial", action="store_true",
                   help="also time every token as a partial step (set_active of all N): the partial graph at "
                        "n = N, against the full-step graph (which full steps run only with --shapes static since "
                        "2026-11-27: with the default shapes both are the same graph and static call)")
    p.add_argument("--eager-attention", action="store_true",
                   help="the bound's extra attention timed eagerly (as before 2026-11-26 night) instead of "
                        "compiled by Inductor")
    add_mode_arg(p)
    return p.parse_args(argv)


def _attention(q, k, v):
    """q [B, S, H, D] (as a projection leaves it), k, v [B, H, S', D] (as the K/V caches hold them)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v)


def sdpa_seconds(size, batch: int, queries: int, keys: int, dtype, device, attend, rounds: int = 20) -> float:
    """Median seconds of one `attend(q, k, v)` of `queries` against `keys` tokens per layer,
    summed over the layers: each layer reads its own K/V, as in a graph (one K/V read by every
    call would stay in the CPU's or GPU's cache, which a graph's layers do not get)."""
    layers = size.layers + size.single_layers
    q = torch.randn(batch, queries, size.heads, size.head_dim, dtype=dtype, device=device)
    kv = [tuple(torch.randn(batch, size.heads, keys, size.head_dim, dtype=dtype, device=device) for _ in range(2))
          for _ in range(layers)]

    def run():
        for _ in range(rounds):
            for k, v in kv:
                attend(q, k, v)
    run()
    return median(time_call(run, 5, device)) / rounds


def extra_attention_seconds(size, batch: int, active: int, dtype, device, eager: bool = False) -> float:
    """What attending to every cached key adds to a graph of T + n tokens, over all layers:
    attention compiled by Inductor as inside a graph (the kernel and layouts a graph gets),
    or eager with `eager`."""
    attend = _attention if eager else torch.compile(_attention, dynamic=False)
    t, n_all = size.text, size.grid ** 2
    return (sdpa_seconds(size, batch, t + active, t + n_all, dtype, device, attend)
            - sdpa_seconds(size, batch, t + active, t + active, dtype, device, attend))


ALL_AS_PARTIAL = "all tokens as a partial step"


def print_table(n, indices, times, bounds, in_a_row, bounds_in_a_row) -> None:
    """One row per setting; a partial fraction without a measured bound leaves its bound
    columns empty (for every token, the bound is plain itself)."""
    base, base_row = median(times["plain"]), median(in_a_row["plain"])
    print("| setting | active image tokens | step time (ms) | ratio to plain | bound (ms) | jano / bound "
          "| back to back (ms) | ratio to plain | bound (ms) | jano / bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| plain torch.compile (Inductor) | {n} | {base * 1e3:.1f} | 1.00x | | "
          f"| {base_row * 1e3:.1f} | 1.00x | | |")
    rows = {f: ("jano, refresh (100%)" if f >= 1 else f"jano, {round(f * 100)}% active", len(index))
            for f, index in indices.items()}
    if ALL_AS_PARTIAL in times:
        rows[ALL_AS_PARTIAL] = (f"jano, {ALL_AS_PARTIAL}", n)
    for key, (label, tokens) in rows.items():
        t, row = median(times[key]), median(in_a_row[key])
        full = key == ALL_AS_PARTIAL or key >= 1
        bound, bound_row = (base, base_row) if full else (bounds.get(key), bounds_in_a_row.get(key))
        columns = [f"{t * 1e3:.1f}", f"{t / base:.2f}x"]
        columns += [f"{bound * 1e3:.1f}", f"{t / bound:.2f}x"] if bound else ["", ""]
        columns += [f"{row * 1e3:.1f}", f"{row / base_row:.2f}x"]
        columns += [f"{bound_row * 1e3:.1f}", f"{row / bound_row:.2f}x"] if bound_row else ["", ""]
        print(f"| {label} | {tokens} | " + " | ".join(columns) + " |")


def print_memory(memory, stats) -> None:
    """Peak memory of plain and jano, each `(bytes allocated at its start, peak)` or None off CUDA."""
    cache = stats["cache_bytes"]
    print(f"jano cache bytes: {mib(cache)}")
    if memory["plain"] is None:
        return
    (plain_start, plain_peak), (jano_start, jano_peak) = memory["plain"], memory["jano"]
    # jano's phase starts with what plain keeps (weights, its CUDA-graph pool): compare what
    # each adds at its peak over what was allocated at its start
    plain_extra, jano_extra = plain_peak - plain_start, jano_peak - jano_start
    ok = jano_extra <= plain_extra + 1.1 * cache
    print(f"peak memory allocated, compiles and warm-up included: plain {mib(plain_peak)} "
          f"({mib(plain_start)} at its start, +{mib(plain_extra)}), jano {mib(jano_peak)} "
          f"({mib(jano_start)} at its start, +{mib(jano_extra)}); "
          f"jano's addition <= plain's + 1.1 x cache bytes: {'yes' if ok else 'NO'}")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = size_from_args(args)
    dtype = getattr(torch, args.dtype)
    device = args.device
    model, kwargs = build_flux(size, args.batch, dtype, device)
    n = size.grid * size.grid
    fractions = args.fractions
    indices = {f: sampled_index(n, f) for f in fractions}
    partial = [f for f in fractions if f < 1]
    print(f"{describe(size)}, batch {args.batch}, {args.dtype}, {device}, mode {args.mode or 'none'}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")

    with torch.no_grad():
        plain = compile_plain(model, args.mode)
        options = ({"recipe": args.recipe} if args.recipe else {}) | shapes_option(args)
        jano = compile_jano(model, args.mode, options or None)
        ctl = jano_compile.controller(jano)
        settings = {"plain": lambda: plain(**kwargs)}
        settings |= {f: (lambda f=f: jano_step(ctl, jano, kwargs, indices[f], n)) for f in fractions}
        full = torch.arange(n)
        if args.full_through_partial:
            settings[ALL_AS_PARTIAL] = lambda: (ctl.set_active(full), jano(**kwargs))
        bounded = [] if args.no_bound else partial
        bound_kwargs = {f: only_tokens(kwargs, indices[f]) for f in bounded}
        settings |= {("bound", f): (lambda f=f: plain(**bound_kwargs[f])) for f in bounded}

        def warm_jano():   # the first call must be full: it fills the caches
            return ({"jano": first_call_seconds(lambda: jano_step(ctl, jano, kwargs, full, n), device)}
                    | {f: first_call_seconds(settings[f], device) for f in partial}
                    | ({ALL_AS_PARTIAL: first_call_seconds(settings[ALL_AS_PARTIAL], device)}
                       if args.full_through_partial else {}))

        print("compiling plain Inductor ...", flush=True)
        memory = {}
        first_plain, memory["plain"] = peak_memory(lambda: first_call_seconds(settings["plain"], device), device)
        print("compiling jano ...", flush=True)
        first, memory["jano"] = peak_memory(warm_jano, device)
        first["plain"] = first_plain
        if bounded:
            print("compiling the bounds' static graphs ...", flush=True)
        for f in bounded:
            first_call_seconds(settings["bound", f], device)

        times, in_a_row = interleaved_timings(settings, tqdm(range(args.rounds), desc="rounds"),
                                              args.steps, args.in_a_row, device)
        extra = {f: extra_attention_seconds(size, args.batch, len(indices[f]), dtype, device,
                                            eager=args.eager_attention) for f in bounded}
        bounds = {f: median(times["bound", f]) + extra[f] for f in bounded}
        bounds_in_a_row = {f: median(in_a_row["bound", f]) + extra[f] for f in bounded}

    stats = ctl.stats()
    assert stats["rewritten"], stats["fallback_reason"]
    print(f"\n{jano_summary(stats)}\n")
    print_table(n, indices, times, bounds, in_a_row, bounds_in_a_row)
    print("\nstep time: each call between two synchronisations (host work before the first kernel shows), "
          f"the settings taking turns call by call; back to back: {args.in_a_row} calls, one synchronisation "
          "at the end, as a sampling loop runs (the settings take turns block by block)")
    print("bound: plain Inductor on the T + n tokens alone, plus per attention layer the extra time of "
          f"T + n queries against T + N keys ({'eager' if args.eager_attention else 'Inductor-compiled'} "
          "scaled_dot_product_attention, each layer its own K/V)")
    print("\nfirst call, compile included (s): " + ", ".join(
        [f"plain {first['plain']:.1f}", f"jano {first['jano']:.1f}"]
        + [f"jano's first {round(f * 100)}% call {first[f]:.1f}" for f in partial]
        + ([f"jano's first call with {ALL_AS_PARTIAL} {first[ALL_AS_PARTIAL]:.1f}"]
           if ALL_AS_PARTIAL in first else [])))
    print_memory(memory, stats)
    print(f"cudagraph skips: {cudagraph_skips()}")


if __name__ == "__main__":
    main()
