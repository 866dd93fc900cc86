"""Where a step's time goes: plain torch.compile against jano at given active fractions,
under torch.profiler, and beside each fraction its bound graph (plain Inductor on the
T + n tokens alone, the static graph a partial step cannot beat but for its wider
attention). Prints, per setting, the time kernels kept the device busy, the wall time of
one call between synchronisations (host work before the first kernel shows) and per call
of calls issued back to back (as a sampling loop issues steps: the device waits on the
host only if the host is slower), their ratios to busy time, the host time of a call
spent outside any op (Python: guards, jano's runtime, Inductor's wrapper), and the ops that
took the most device (or, on a CPU, host) time; on CUDA also those that took the most host
time (launches, copies).

    python benchmarks/profile_step.py --flux-dev --layers 2 --single-layers 4 --dtype bfloat16 --device cuda
        [--mode reduce-overhead]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

import jano_compile
from common import (add_device_arg, add_mode_arg, add_size_args, at_least, build_flux, compile_jano, compile_plain,
                    cudagraph_skips, describe, fraction_list, jano_step, median, only_tokens, sampled_index,
                    size_from_args, sync, time_call, time_in_a_row)


KINDS = {   # kernel (CUDA) or op (CPU) names -> kind, first match wins
    "attention": re.compile(r"sdpa|flash|fmha|attention|attn", re.I),
    "matmul": re.compile(r"gemm|nvjet|cutlass|xmma|addmm|aten::mm|aten::bmm|matmul|linear", re.I),
    "generated": re.compile(r"^triton_|cpp_fused"),
}


TIMELINE = ("before_first", "busy", "idle", "after_last", "host")


def time_by_kind(leaves, key: str, calls: int) -> dict[str, float]:
    """Milliseconds per call of each kind of kernel (see KINDS; the rest is "other")."""
    totals = dict.fromkeys([*KINDS, "other"], 0.0)
    for event in leaves:
        kind = next((k for k, pattern in KINDS.items() if pattern.search(event.key)), "other")
        totals[kind] += getattr(event, key) / calls / 1e3
    return totals


def _interval(event) -> tuple[float, float]:
    return event.time_range.start, event.time_range.end


def _union_length(intervals) -> float:
    """Total length covered by possibly overlapping (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def call_timelines(events, step_range: str, is_kernel) -> list[dict[str, float]]:
    """One timeline (ms) per profiled call: `events` from a profile whose calls each ran in a
    `record_function(step_range)` range followed by a synchronisation, so every kernel of a
    call starts before the next call's range. `is_kernel(event)`: the events that count as
    device work (CUDA kernels and copies; on a CPU, top-level ops). Keys: `before_first`
    (range start to first kernel start), `busy` (the union of kernel intervals), `idle`
    (first kernel start to last kernel end, less busy), `after_last` (last kernel end to the
    range's end, negative while kernels run past the host's return), `host` (the range)."""
    ranges = sorted((e for e in events if e.name == step_range and not is_kernel(e)),
                    key=lambda e: e.time_range.start)
    kernels = sorted((_interval(e) for e in events if is_kernel(e) and e.name != step_range))
    timelines = []
    for i, call in enumerate(ranges):
        start, end = _interval(call)
        until = ranges[i + 1].time_range.start if i + 1 < len(ranges) else float("inf")
        mine = [k for k in kernels if start <= k[0] < until]
        if not mine:
            continue
        first, last = mine[0][0], max(k[1] for k in mine)
        busy = _union_length(mine)
        timelines.append({"before_first": (first - start) / 1e3, "busy": busy / 1e3,
                          "idle": (last - first - busy) / 1e3, "after_last": (end - last) / 1e3,
                          "host": (end - start) / 1e3})
    return timelines


def cuda_work(event) -> bool:
    """A CUDA kernel, copy or memset."""
    return event.device_type == DeviceType.CUDA


def work_averages(averages, step_range: str, cuda: bool) -> list:
    """The key averages that count as work: on CUDA kernels, copies and memsets, but not the
    step's own range, which the profiler also lists on the device's timeline with the whole
    step's time (counting it doubled "device busy" in the runs before 2026-11-27); on a
    CPU every op but the range (a Triton launch is listed both as an op and as its kernel)."""
    return [e for e in averages if e.key != step_range and (not cuda or cuda_work(e))]


def top_level_op(event) -> bool:
    """On a CPU, what stands in for a kernel: an aten op called from outside any aten op."""
    return (event.device_type == DeviceType.CPU and event.name.startswith("aten::")
            and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::")))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_args(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_device_arg(p)
    p.add_argument("--fractions", type=fraction_list, default=fraction_list("1.0,0.3"),
                   help="active-token fractions, each in (0, 1] (default 1.0,0.3)")
    p.add_argument("--calls", type=at_least(1), default=3, help="profiled calls per setting")
    p.add_argument("--in-a-row", type=at_least(1), default=20, help="calls per back-to-back timing")
    p.add_argument("--rows", type=int, default=12, help="ops listed per setting")
    p.add_argument("--trace", type=Path, help="write one call per setting as a Chrome trace here")
    add_mode_arg(p)
    args = p.parse_args(argv)
    size = size_from_args(args)
    cuda = args.device.startswith("cuda")
    model, kwargs = build_flux(size, 1, getattr(torch, args.dtype), args.device)
    n = size.grid ** 2
    print(f"{describe(size)}, {args.dtype}, {args.device}, mode {args.mode or 'none'}, torch {torch.__version__}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    with torch.no_grad():
        plain = compile_plain(model, args.mode)
        jano = compile_jano(model, args.mode)
        ctl = jano_compile.controller(jano)
        jano_step(ctl, jano, kwargs, torch.arange(n), n)   # the first jano call must be full
        settings = {"plain torch.compile": lambda: plain(**kwargs)}
        for f in args.fractions:
            index = sampled_index(n, f)
            settings[f"jano {f:.0%} active"] = lambda index=index: jano_step(ctl, jano, kwargs, index, n)
            if f < 1:
                bound_kwargs = only_tokens(kwargs, index)
                settings[f"bound graph {f:.0%}"] = lambda bound_kwargs=bound_kwargs: plain(**bound_kwargs)
        for call in settings.values():   # compile, warm up and (reduce-overhead) capture
            call(), call(), call()
        busy_label = "device busy" if cuda else "host self time"
        is_kernel = cuda_work if cuda else top_level_op
        summary, kinds, timelines = [], {}, {}
        for name, call in settings.items():
            wall = median(time_call(call, 5, args.device))
            in_a_row = median([time_in_a_row(call, args.in_a_row, args.device) for _ in range(3)])
            step_range = f"step: {name}"
            with profile(activities=activities) as prof:
                for _ in range(args.calls):   # each call between synchronisations: its own timeline
                    with record_function(step_range):
                        call()
                    sync(args.device)
            if args.trace:
                args.trace.mkdir(parents=True, exist_ok=True)
                with profile(activities=activities) as one:
                    with record_function(step_range):
                        call()
                    sync(args.device)
                one.export_chrome_trace(str(args.trace / f"{_slug(name)}.json.gz"))
            calls = call_timelines(prof.events(), step_range, is_kernel)
            if calls:
                timelines[name] = {key: median([t[key] for t in calls]) for key in TIMELINE}
            events = prof.key_averages()
            outside_ops = next(e.self_cpu_time_total for e in events
                               if e.key == step_range and e.device_type == DeviceType.CPU) / args.calls / 1e3
            leaves = work_averages(events, step_range, cuda)
            busy = sum(getattr(e, sort_key) for e in leaves) / args.calls / 1e3
            kinds[name] = time_by_kind(leaves, sort_key, args.calls)
            summary.append(f"| {name} | {busy:.2f} | {wall * 1e3:.2f} | {wall * 1e3 / busy:.2f} | "
                           f"{in_a_row * 1e3:.2f} | {in_a_row * 1e3 / busy:.2f} | {outside_ops:.2f} |")
            print(f"\n== {name}: {busy_label} {busy:.2f} ms per call; wall {wall * 1e3:.2f} ms one call at a "
                  f"time ({wall * 1e3 / busy:.2f}x busy), {in_a_row * 1e3:.2f} ms per call in a row "
                  f"({in_a_row * 1e3 / busy:.2f}x busy); host outside ops {outside_ops:.2f} ms per call "
                  "(under the profiler)")
            print(events.table(sort_by=sort_key, row_limit=args.rows, max_name_column_width=60))
            if cuda:   # the host's side: launches, copies, the step's own Python (its range's self time)
                print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    print(f"\n| setting | {busy_label} (ms) | wall, one call (ms) | / busy | wall, calls in a row (ms) | / busy "
          "| host outside ops (ms) |\n|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    print("\nOne call between synchronisations, under the profiler (ms, medians of "
          f"{args.calls} calls; on a CPU \"kernels\" are the aten ops Python calls, and Inductor's C++ "
          "kernels count as idle): host time before the "
          "first kernel; the kernels' busy time; device idle between the first kernel's start and the "
          "last one's end; from the last kernel's end to the host's return (negative: kernels run on "
          "after it); the host's time in the call")
    print("| setting | before first kernel | busy | idle inside | last kernel to return | host |\n"
          "|---|---|---|---|---|---|")
    for name, t in timelines.items():
        print(f"| {name} | " + " | ".join(f"{t[key]:.2f}" for key in TIMELINE) + " |")
    print(f"\n{busy_label} by kind of kernel (ms per call; attention: {KINDS['attention'].pattern}; "
          f"matmul: {KINDS['matmul'].pattern}; generated: Inductor's own kernels)")
    print("| setting | " + " | ".join(KINDS) + " | other |\n|---|" + "---|" * (len(KINDS) + 1))
    for name, by_kind in kinds.items():
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in by_kind.values()) + " |")
    for name in kinds:   # what a partial step adds to its bound graph, kind by kind
        if name.startswith("bound graph "):
            jano_name = f"jano {name.removeprefix('bound graph ')} active"
            print(f"| {jano_name} - {name} | " + " | ".join(
                f"{kinds[jano_name][k] - kinds[name][k]:+.2f}" for k in kinds[name]) + " |")
    print(f"\ncudagraph skips: {cudagraph_skips()}")


if __name__ == "__main__":
    main()
