"""Shared pieces of the benchmarks: the FLUX-architecture transformer, compiling it plain
and with jano in one torch.compile mode, timers and peak memory."""
from __future__ import annotations

import argparse
import functools
import random
import statistics
import time
import warnings
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class FluxSize:
    """Random-weight FLUX-architecture transformer (diffusers FluxTransformer2DModel)."""
    grid: int = 32            # image tokens = grid * grid
    text: int = 64
    heads: int = 8
    head_dim: int = 64
    layers: int = 2
    single_layers: int = 4
    in_channels: int = 64

    @staticmethod
    def flux_dev() -> "FluxSize":
        """FLUX.1-dev at 1024x1024: 4096 image tokens, 512 text tokens."""
        return FluxSize(grid=64, text=512, heads=24, head_dim=128, layers=19, single_layers=38)


def at_least(minimum: int):
    """argparse type: an integer >= `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "int"      # argparse names the type in its error for a non-integer
    return parse


def fraction_list(text: str) -> list[float]:
    """argparse type: a comma list of active-token fractions, each in (0, 1]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of fractions, e.g. 1.0,0.3,0.1") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every fraction must lie in (0, 1] (1.0: a refresh step)")
    return values


def device_arg(text: str) -> str:
    """argparse type: a torch device this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device here (torch {torch.__version__}); "
                                         "use --device cpu")
    return text


def add_device_arg(parser) -> None:
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda where there is one, else cpu)")


def add_size_args(parser) -> None:
    """Command-line flags that pick a FluxSize (see `size_from_args`)."""
    parser.add_argument("--flux-dev", action="store_true",
                        help="FLUX.1-dev width and token counts (4096 + 512 tokens, 24x128 heads)")
    parser.add_argument("--grid", type=at_least(1), default=None,
                        help="image tokens per side (default 32; 64 with --flux-dev)")
    parser.add_argument("--text", type=at_least(1), default=None, help="text tokens (default 64; 512 with --flux-dev)")
    parser.add_argument("--layers", type=at_least(0), default=None,
                        help="double-stream blocks (default 2; 19 with --flux-dev)")
    parser.add_argument("--single-layers", type=at_least(0), default=None,
                        help="single-stream blocks (default 4; 38 with --flux-dev)")


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_mode_arg(parser) -> None:
    """`--mode`: the torch.compile mode of both plain Inductor and jano."""
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="torch.compile mode, the same for plain Inductor and jano (default: none given)")


SHAPES = {"auto": None, "static": True, "symbolic": False}


def add_shapes_arg(parser) -> None:
    """`--shapes`: jano's `static_shapes` option (see `shapes_option`)."""
    parser.add_argument("--shapes", choices=tuple(SHAPES), default="auto",
                        help="jano's graphs: auto (jano's default: one symbolic graph for every step, captured per "
                             "length under reduce-overhead; before 2026-11-27 static per length on CUDA "
                             "without CUDA graphs, and a full-step graph on CUDA), static (static_shapes=True: "
                             "a graph per length and one for full steps) or symbolic (static_shapes=False)")


def shapes_option(args) -> dict:
    """The jano options `--shapes` gives: {} for auto, else {"static_shapes": bool}."""
    value = SHAPES[args.shapes]
    return {} if value is None else {"static_shapes": value}


def size_from_args(args) -> FluxSize:
    base = FluxSize.flux_dev() if args.flux_dev else FluxSize()
    given = {k: getattr(args, k) for k in ("grid", "text", "layers", "single_layers") if getattr(args, k) is not None}
    return replace(base, **given)


def describe(size: FluxSize) -> str:
    return (f"FLUX-architecture transformer: {size.grid ** 2} image + {size.text} text tokens, "
            f"{size.layers}+{size.single_layers} blocks, {size.heads}x{size.head_dim} heads")


def build_flux(size: FluxSize, batch: int, dtype, device, seed: int = 0):
    """(transformer, call kwargs) with random weights and inputs."""
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    d = size.head_dim
    third = (d // 3) // 2 * 2
    with torch.device(device):   # initialise on the device: a FLUX.1-dev-sized model on a CPU takes minutes
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=size.in_channels, num_layers=size.layers,
            num_single_layers=size.single_layers, attention_head_dim=d,
            num_attention_heads=size.heads, joint_attention_dim=256, pooled_projection_dim=256,
            axes_dims_rope=(d - 2 * third, third, third)).to(dtype).eval()
    n = size.grid * size.grid
    img_ids = torch.zeros(n, 3, device=device)
    img_ids[:, 1] = torch.arange(n, device=device) // size.grid
    img_ids[:, 2] = torch.arange(n, device=device) % size.grid
    kwargs = dict(
        hidden_states=torch.randn(batch, n, size.in_channels, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(batch, size.text, 256, device=device, dtype=dtype),
        pooled_projections=torch.randn(batch, 256, device=device, dtype=dtype),
        timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
        img_ids=img_ids, txt_ids=torch.zeros(size.text, 3, device=device), return_dict=False)
    return model, kwargs


def compile_plain(model, mode=None):
    return torch.compile(model, backend="inductor", dynamic=False, mode=mode)


def compile_jano(model, mode=None, options=None):
    """torch.compile(model, backend="jano") with `mode` and `options`. torch.compile refuses
    both at once, so then the backend gets them as torch's wrapper would pass each alone."""
    if mode and options:
        from jano_compile import jano_backend
        return torch.compile(model, backend=functools.partial(jano_backend, mode=mode, options=options),
                             dynamic=False)
    return torch.compile(model, backend="jano", dynamic=False, mode=mode, options=options)


def sampled_index(n: int, fraction: float) -> torch.Tensor:
    """A fixed random set of round(fraction * n) (at least 1) of the n image-token positions,
    sorted."""
    return torch.tensor(sorted(random.Random(0).sample(range(n), max(1, round(fraction * n)))), dtype=torch.long)


def jano_step(ctl, compiled, kwargs, index: torch.Tensor, n: int):
    """One jano call with `index` active: a refresh when it holds all n tokens (manual
    control from the first call on, as the measurement means: no warning that it is)."""
    if index.numel() >= n:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"jano: refresh\(\) before the model's first call")
            ctl.refresh()
    else:
        ctl.set_active(index)
    return compiled(**kwargs)


def only_tokens(kwargs, index: torch.Tensor) -> dict:
    """The model's inputs restricted to the image tokens at `index` (all text tokens kept):
    plain Inductor on these is the static-shape graph a partial step cannot beat."""
    index = index.to(kwargs["hidden_states"].device)
    return {**kwargs, "hidden_states": kwargs["hidden_states"][:, index].contiguous(),
            "img_ids": kwargs["img_ids"][index].contiguous()}


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, repeats: int, device) -> list[float]:
    """Wall-clock seconds of `fn()` for each of `repeats` calls."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_in_a_row(fn, calls: int, device) -> float:
    """Wall-clock seconds per call of `calls` calls of `fn` issued back to back, one
    synchronisation at the end: as a sampling loop runs, so host work overlaps the device's."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def interleaved_timings(settings: dict, rounds, calls: int, in_a_row: int, device) -> tuple[dict, dict]:
    """Per setting name: wall seconds of each single call between synchronisations, and
    per call of each block of `in_a_row` calls back to back (`time_call`, `time_in_a_row`).
    `rounds`: an iterable of round numbers (a progress bar, say). The settings take turns
    call by call, and block by block, each round starting at the next setting: a machine
    whose speed drifts (a GPU clock that drops under sustained load, another job) slows
    every setting alike instead of whichever follows the heaviest one."""
    names = list(settings)
    single = {name: [] for name in names}
    in_row = {name: [] for name in names}
    for r in rounds:
        order = names[r % len(names):] + names[:r % len(names)]
        for _ in range(calls):
            for name in order:
                single[name] += time_call(settings[name], 1, device)
        for name in order:
            in_row[name].append(time_in_a_row(settings[name], in_a_row, device))
    return single, in_row


def first_call_seconds(fn, device, calls: int = 3) -> float:
    """Wall seconds of the first of `calls` calls of `fn` (compile included); the others
    warm it up (under reduce-overhead: the CUDA-graph warm-up run and capture)."""
    first = time_call(fn, 1, device)[0]
    time_call(fn, calls - 1, device)
    return first


def peak_memory(fn, device):
    """(fn(), (bytes allocated before it, torch.cuda.max_memory_allocated during it));
    None for the bytes off CUDA."""
    if not str(device).startswith("cuda"):
        return fn(), None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    result = fn()
    sync(device)
    return result, (start, torch.cuda.max_memory_allocated())


JANO_STATS = ("graphs", "compiles", "compile_seconds", "static_graphs", "cuda_graphs", "capture_failures")


def jano_summary(stats) -> str:
    """The compile and capture counts of `ctl.stats()`, those it has."""
    def show(value):
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    return "jano: " + ", ".join(f"{k} {show(stats[k])}" for k in JANO_STATS if k in stats)


def cudagraph_skips() -> int:
    """Inductor's count of graphs it ran without CUDA graphs (0 is the target under reduce-overhead)."""
    return torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]


def mib(nbytes) -> str:
    return f"{nbytes / 2 ** 20:.1f} MiB"


def median(xs) -> float:
    return statistics.median(xs)
