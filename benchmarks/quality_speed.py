"""Quality against speed on the bundled model, in one run: plain torch.compile, jano,
diffusers' caches (FirstBlockCache, TaylorSeer, MagCache, PyramidAttentionBroadcast) and
cache-dit's DBCache, each at its documented default and at a setting that does about half
the work.

    python benchmarks/quality_speed.py [--seeds 8] [--steps 50] [--plot docs/quality_speed.png]
                                       [--methods 'jano*;DBCache*']

For every method and seed it measures
  - wall-clock time of a whole generation (speedup = plain median / method median; the
    methods take turns, seed by seed, so machine noise hits them alike);
  - the work done: matrix-product and attention FLOPs counted at the ATen level
    (work_counter.py) over the generation, as a fraction of the full model's;
  - PSNR (data range 1) and SSIM (as scikit-image computes it) of the image in [0, 1]
    against the full model run eagerly.
jano and the baseline run under plain torch.compile (Inductor). diffusers' hooks break
graphs, so each of its caches runs both eagerly and with regional compilation
(`compile_repeated_blocks`); the table keeps the faster and says which. cache-dit's DBCache
(`pip install cache-dit`) runs eagerly, with regional compilation, and with the whole
transformer under torch.compile as cache-dit documents; again the fastest is kept.

Settings that need tuning are found on a calibration seed that is never measured:
MagCache's ratios as diffusers documents (one run with `calibrate=True`), and each
"about half the work" setting by trying the method's own knob and keeping the value whose
work is closest to 50%.

DBCache's documented default is F8B0 (8 front blocks always computed), residual-diff
threshold 0.08, 8 warm-up steps; cache-dit refuses F8 on a model with fewer than 8 blocks,
and the bundled model has 4 (2 double-stream + 2 single-stream, which cache-dit's FLUX
adapter runs as one list), so the default row uses F1B0 with every other field at its
default, the configuration cache-dit's own DBCache tables show as "F1B0 (0.08)"; its
"about half" searches residual_diff_threshold. The transformer-only interface needs
num_inference_steps in the config; the context is refreshed before every image.

--methods keeps only the rows whose "method: setting" matches one of the given
semicolon-separated globs (case-insensitive; settings hold commas), e.g.
'jano*;FirstBlockCache*about half*;DBCache*'; plain torch.compile is always kept, as the
baseline of speed and work. The plot goes to docs/quality_speed.png only for a run of every
method at the default seeds and steps (a smaller run writes it only where --plot says).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import fnmatch
import io
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from jano_compile.metrics import psnr, ssim
from jano_compile.models import bundled
from work_counter import WorkCounter

# cache-dit logs every context it creates at INFO; keep warnings (set before it is imported)
os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")

EXACT_DB = 100               # PSNR above this: the same image up to float rounding
TARGET_DB = 30               # jano's quality target (issue 4)
CALIBRATION_SEED = 1000      # for calibration and knob searches; the measured seeds are 0..n-1
def _period(p: int) -> dict:
    return dict(static_interval=p, medium_interval=p, active_interval=p)


# chosen on calibration seeds (benchmarks/forecast_calibration.py), never on the measured ones
JANO_SETTINGS = {
    "forecast, period 3 (default)": {},
    "forecast, period 2": _period(2),
    "forecast, period 4": _period(4),
    "forecast, regions 4/2/2": dict(static_interval=4, medium_interval=2, active_interval=2),
    # the same periods, the regions ranked by measured forecast error after every full step
    # (the emulation's best region schedule on the calibration seeds, docs/forecast_emulation.md)
    "forecast, regions 4/2/2 by error": dict(static_interval=4, medium_interval=2, active_interval=2,
                                             levels_from="error"),
    "forecast, regions 6/3/2 by error": dict(static_interval=6, medium_interval=3, active_interval=2,
                                             levels_from="error"),
    # a work budget: per-region periods chosen from measured forecast error (periods.py); 0.4 is
    # the default's work (period 3 over 50 steps), 0.5 about half; periods 1/2/3/6 beat 1/2/4/8 on
    # the calibration seeds (forecast_calibration.py --work), with and without K/V forecast
    "forecast, work 0.4 (periods by error)": dict(work=0.4, periods=(1, 2, 3, 6)),
    "forecast, work 0.4 (periods by error, K/V forecast)": dict(work=0.4, periods=(1, 2, 3, 6), forecast_kv=True),
    "forecast, work 0.5 (periods by error, K/V forecast)": dict(work=0.5, periods=(1, 2, 3, 6), forecast_kv=True),
    "forecast, regions 4/2/2 by error, K/V forecast": dict(static_interval=4, medium_interval=2, active_interval=2,
                                                           levels_from="error", forecast_kv=True),
    "paper: hold, reference schedule": dict(recipe="paper"),
    "paper, faster (quantile 60/20)": dict(recipe="paper", static_fraction=0.6, medium_fraction=0.2),
}


class TimestepTracker:
    """Calls the transformer and remembers the timestep in flight on diffusers' 0..1000
    scale (the bundled model's timestep is sigma in [0, 1]); PyramidAttentionBroadcast
    reads it through `current_timestep_callback`."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.current = 1000.0

    def __call__(self, **kwargs):
        self.current = float(kwargs["timestep"].flatten()[0]) * 1000.0
        return self.module(**kwargs)


@dataclass
class Variant:
    """One way of running a method: `transformer` is what the sampling loop calls;
    `cached_module` is the diffusers model whose cache state is reset per image; `reset`,
    if given, is called before every image (cache-dit's context refresh)."""
    run_as: str
    transformer: Callable
    cached_module: Optional[torch.nn.Module] = None
    reset: Optional[Callable[[], None]] = None
    seconds: list = field(default_factory=list)
    images: list = field(default_factory=list)


@dataclass
class Method:
    name: str
    setting: str
    timed: list[Variant]
    counted: Variant            # runs its ops one by one, so WorkCounter sees them
    work: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def generate(model, variant: Variant, class_id: int, seed: int, steps: int) -> torch.Tensor:
    """One image [3, H, W] in [0, 1]."""
    if variant.reset is not None:
        variant.reset()
    module = variant.cached_module
    if module is not None:
        module._reset_stateful_cache()
    with module.cache_context("cond") if module is not None else contextlib.nullcontext():
        generator = torch.Generator().manual_seed(seed)
        return model.sample([class_id], steps, generator, transformer=variant.transformer)[0]


def count_work(model, variant: Variant, class_id: int, seed: int, steps: int) -> int:
    with WorkCounter() as counter:
        generate(model, variant, class_id, seed, steps)
    return counter.flops


# ---------------------------------------------------------------------------- the methods
def plain_method(model) -> Method:
    compiled = torch.compile(copy.deepcopy(model.transformer), dynamic=False)
    return Method("plain torch.compile", "full model", [Variant("torch.compile", compiled)],
                  Variant("eager", model.transformer))


def jano_method(model, setting: str, options: dict, steps: int) -> Method:
    def variant(lowering: str) -> Variant:
        compiled = torch.compile(copy.deepcopy(model.transformer), backend="jano", dynamic=False,
                                 options={"lowering": lowering, "num_inference_steps": steps, **options})
        return Variant("torch.compile" if lowering == "inductor" else "eager lowering", compiled)
    return Method("jano", setting, [variant("inductor")], variant("eager"))


def diffusers_variant(model, make_config: Callable, regional: bool) -> Variant:
    """A copy of the transformer with a diffusers cache; `make_config(timestep_callback)`."""
    module = copy.deepcopy(model.transformer)
    tracker = TimestepTracker(module)
    module.enable_cache(make_config(lambda: tracker.current))
    if regional:
        module.compile_repeated_blocks()
    return Variant("regional compile" if regional else "eager", tracker, module)


def diffusers_method(model, name: str, setting: str, make_config: Callable) -> Method:
    eager = diffusers_variant(model, make_config, regional=False)
    return Method(name, setting, [eager, diffusers_variant(model, make_config, regional=True)], eager)


def calibrate_mag_ratios(model, steps: int) -> list[float]:
    """MagCache's documented calibration: one run with `calibrate=True`, which prints the
    ratios to pass as `mag_ratios`."""
    from diffusers import MagCacheConfig
    variant = diffusers_variant(model, lambda _: MagCacheConfig(calibrate=True, num_inference_steps=steps),
                                regional=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        generate(model, variant, 0, CALIBRATION_SEED, steps)
    lines = [line for line in printed.getvalue().splitlines()
             if line.startswith("[") and not line.startswith("[MagCache]")]
    if not lines:
        raise RuntimeError(f"MagCache calibration printed no ratios:\n{printed.getvalue()}")
    return [float(x) for x in ast.literal_eval(lines[-1])]


def half_work_setting(model, steps: int, full_flops: int, candidates: dict[str, Callable],
                      eager_variant: Callable = None) -> tuple[str, Callable, float]:
    """(label, make_config, work) of the candidate whose work is closest to 50% on the
    calibration seed; `eager_variant(model, make_config)` builds the counted run
    (default: a diffusers cache, eager)."""
    eager_variant = eager_variant or (lambda model, make_config: diffusers_variant(model, make_config, regional=False))
    found = []
    for label, make_config in candidates.items():
        variant = eager_variant(model, make_config)
        found.append((label, make_config, count_work(model, variant, 0, CALIBRATION_SEED, steps) / full_flops))
    return min(found, key=lambda f: abs(f[2] - 0.5))


def family_wanted(wanted: Callable, name: str, default_label: str, candidates: dict) -> bool:
    """Whether any row of a family could pass the --methods filter (saves its calibration)."""
    return any(wanted(name, s) for s in [default_label] + [f"{label} (about half)" for label in candidates])


def diffusers_methods(model, steps: int, full_flops: int, wanted: Callable = lambda *_: True) -> list[Method]:
    from diffusers import (FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                           TaylorSeerCacheConfig)
    ratios = None   # MagCache's, calibrated below only if a MagCache row is wanted
    # diffusers' documented example (float32 Taylor factors; the dataclass default is bfloat16)
    taylor = dict(cache_interval=5, max_order=1, disable_cache_before_step=3, taylor_factors_dtype=torch.float32)
    families = {
        "FirstBlockCache": (
            ("threshold 0.05 (default)", lambda _: FirstBlockCacheConfig()),
            {f"threshold {t}": (lambda _, t=t: FirstBlockCacheConfig(threshold=t))
             for t in (0.08, 0.12, 0.18, 0.25, 0.35, 0.5, 0.7, 1.0)}),
        "TaylorSeer": (
            ("interval 5, order 1 (documented)", lambda _: TaylorSeerCacheConfig(**taylor)),
            {f"{'lite, ' if lite else ''}interval {i}, order 1": (
                lambda _, i=i, lite=lite: TaylorSeerCacheConfig(**{**taylor, "cache_interval": i, "use_lite_mode": lite}))
             for lite in (False, True) for i in (2, 3, 4)}),
        "MagCache": (
            ("threshold 0.06 (default), calibrated",
             lambda _: MagCacheConfig(mag_ratios=ratios, num_inference_steps=steps)),
            {f"threshold {t}, calibrated": (lambda _, t=t: MagCacheConfig(
                threshold=t, mag_ratios=ratios, num_inference_steps=steps))
             for t in (0.1, 0.15, 0.25, 0.4, 0.6, 1.0)}),
        "PyramidAttentionBroadcast": (
            ("spatial skip 2, t in (100, 800) (documented)",
             lambda now: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                         current_timestep_callback=now)),
            {f"spatial skip {k}, t in (0, 1000)": (lambda now, k=k: PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=k, spatial_attention_timestep_skip_range=(0, 1000),
                current_timestep_callback=now))
             for k in (2, 3, 5, 10)}),
    }
    families = {name: f for name, f in families.items() if family_wanted(wanted, name, f[0][0], f[1])}
    if "MagCache" in families:
        ratios = calibrate_mag_ratios(model, steps)
    methods = []
    for name, (default, candidates) in tqdm(families.items(), desc="calibrating diffusers caches"):
        methods.append(diffusers_method(model, name, default[0], default[1]))
        label, make_config, work = half_work_setting(model, steps, full_flops, candidates)
        methods.append(diffusers_method(model, name, f"{label} (about half)", make_config))
        methods[-1].notes.append(f"work {work:.0%} on the calibration seed")
    return methods


# cache-dit's DBCache. Documented default: DBCacheConfig() = F8B0, threshold 0.08, 8 warm-up
# steps, no cap on cached steps. F8 needs at least 8 blocks (the bundled model has 4), so
# Fn_compute_blocks=1 (cache-dit's "F1B0 (0.08)"); the rest stays at the defaults.
DBCACHE = "DBCache (cache-dit)"
DBCACHE_BASE = dict(Fn_compute_blocks=1, Bn_compute_blocks=0)
DBCACHE_THRESHOLDS = (0.12, 0.16, 0.2, 0.25, 0.35, 0.5, 0.7, 1.0)   # searched for about half the work


def dbcache_variant(model, make_config: Callable, run_as: str) -> Variant:
    """A copy of the transformer with cache-dit's DBCache, run `eager`, with `regional
    compile` (diffusers' compile_repeated_blocks) or under `torch.compile` as a whole (the
    way cache-dit documents). Transformer-only use, as cache-dit documents it: the config
    carries num_inference_steps, and the context is refreshed before each image."""
    import cache_dit
    module = copy.deepcopy(model.transformer)
    cache_dit.enable_cache(module, cache_config=make_config())
    if run_as == "regional compile":
        module.compile_repeated_blocks()
    call = torch.compile(module) if run_as == "torch.compile" else module
    return Variant(run_as, call, reset=lambda: cache_dit.refresh_context(module, cache_config=make_config()))


def dbcache_methods(model, steps: int, full_flops: int, wanted: Callable = lambda *_: True) -> list[Method]:
    default_label = "F1B0, threshold 0.08, warm-up 8 (default, F1 for 4 blocks)"
    thresholds = {f"F1B0, threshold {t}": t for t in DBCACHE_THRESHOLDS}
    if not family_wanted(wanted, DBCACHE, default_label, thresholds):
        return []       # before the import: --methods leaving DBCache out needs no cache-dit
    try:
        from cache_dit import DBCacheConfig
    except ImportError as e:
        raise SystemExit(f"cache-dit is not installed ({e}): `pip install cache-dit`, "
                         f"or leave DBCache out with --methods") from e

    def config(**kw) -> Callable:
        return lambda: DBCacheConfig(**{**DBCACHE_BASE, **kw, "num_inference_steps": steps})
    default = (default_label, config())
    candidates = {label: config(residual_diff_threshold=t) for label, t in thresholds.items()}

    def method(setting: str, make_config: Callable) -> Method:
        eager = dbcache_variant(model, make_config, "eager")
        return Method(DBCACHE, setting, [eager] + [dbcache_variant(model, make_config, run_as)
                                                    for run_as in ("regional compile", "torch.compile")], eager)
    label, make_config, work = half_work_setting(model, steps, full_flops, candidates,
                                                 lambda model, make: dbcache_variant(model, make, "eager"))
    methods = [method(*default), method(f"{label} (about half)", make_config)]
    methods[-1].notes.append(f"work {work:.0%} on the calibration seed")
    return methods


# ---------------------------------------------------------------------------- the run
def warm_up(model, methods: list[Method], steps: int) -> None:
    """Compile every variant (one generation), time a second generation on the calibration
    seed, and keep each method's fastest variant; a variant that fails is reported."""
    for method in tqdm(methods, desc="compiling, choosing eager or compiled"):
        generate(model, method.counted, 0, CALIBRATION_SEED, steps)   # compiled before it is counted
        seconds = {}
        for variant in method.timed:
            try:
                generate(model, variant, 0, CALIBRATION_SEED, steps)
                start = time.perf_counter()
                generate(model, variant, 0, CALIBRATION_SEED, steps)
                seconds[variant.run_as] = time.perf_counter() - start
            except Exception as e:  # noqa: BLE001 - report it and measure the other variants
                method.notes.append(f"{variant.run_as} failed: {type(e).__name__}: {str(e)[:120]}")
        if seconds:
            fastest = min(seconds, key=seconds.get)
            method.notes += [f"{run_as} {seconds[run_as] / seconds[fastest]:.1f}x slower on the calibration seed"
                             for run_as in seconds if run_as != fastest]
            method.timed = [v for v in method.timed if v.run_as == fastest]
        else:
            method.timed = []


def measure(model, methods: list[Method], seeds: list[int], steps: int) -> list[torch.Tensor]:
    """Fills seconds, images and work; returns the full model's images per seed."""
    references = []
    for seed in tqdm(seeds, desc="seeds"):
        class_id = seed % model.num_classes
        full_flops = count_work(model, methods[0].counted, class_id, seed, steps)
        references.append(generate(model, methods[0].counted, class_id, seed, steps))
        for method in methods:
            method.work.append(count_work(model, method.counted, class_id, seed, steps) / full_flops)
            for variant in method.timed:
                start = time.perf_counter()
                variant.images.append(generate(model, variant, class_id, seed, steps))
                variant.seconds.append(time.perf_counter() - start)
    return references


def summarise(methods: list[Method], references: list[torch.Tensor]) -> list[dict]:
    base = statistics.median(methods[0].timed[0].seconds)
    rows = []
    for method in methods:
        if not method.timed:
            rows.append(dict(method=method.name, setting=method.setting, notes=method.notes))
            continue
        variant = method.timed[0]
        p = [psnr(img, ref) for img, ref in zip(variant.images, references)]
        s = [ssim(img, ref) for img, ref in zip(variant.images, references)]
        rows.append(dict(
            method=method.name, setting=method.setting, run_as=variant.run_as,
            seconds=statistics.median(variant.seconds), speedup=base / statistics.median(variant.seconds),
            work=statistics.fmean(method.work), psnr_mean=statistics.fmean(p), psnr_worst=min(p),
            ssim_mean=statistics.fmean(s), ssim_worst=min(s), notes=method.notes))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| method | setting | run as | s / image | speedup | work done | PSNR mean (worst) | SSIM mean (worst) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "speedup" not in r:
            lines.append(f"| {r['method']} | {r['setting']} | failed: {'; '.join(r['notes'])} | | | | | |")
            continue
        psnr_text = (f"> {EXACT_DB} (same image)" if r["psnr_worst"] > EXACT_DB
                     else f"{r['psnr_mean']:.2f} ({r['psnr_worst']:.2f})")
        lines.append(f"| {r['method']} | {r['setting']} | {r['run_as']} | {r['seconds']:.2f} | {r['speedup']:.2f}x "
                     f"| {r['work']:.0%} | {psnr_text} | {r['ssim_mean']:.3f} ({r['ssim_worst']:.3f}) |")
    return "\n".join(lines)


def short_label(setting: str) -> str:
    """'threshold 0.1, calibrated (about half)' -> 'threshold 0.1'; 'default (quantile: ...)' -> 'default'."""
    label = setting.replace(", calibrated", "")
    return re.sub(r" \((default[^)]*|documented|about half|quantile[^)]*)\)$", "", label)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against speedup (left) and against work done (right), one point per method and
    setting; the bar under a point reaches the worst seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"jano": "tab:red", "FirstBlockCache": "tab:blue", "TaylorSeer": "tab:green",
               "MagCache": "tab:purple", "PyramidAttentionBroadcast": "tab:orange", DBCACHE: "tab:brown"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    points = [r for r in rows if "speedup" in r and r["method"] in colours]
    top = min(max(r["psnr_mean"] for r in points) + 4, EXACT_DB)
    for ax, key, label in ((axes[0], "speedup", "speedup over plain torch.compile (wall clock)"),
                           (axes[1], "work", "work done (fraction of the full model's FLOPs)")):
        for r in points:
            c = colours[r["method"]]
            ax.errorbar(r[key], r["psnr_mean"], yerr=[[r["psnr_mean"] - r["psnr_worst"]], [0]], fmt="o",
                        color=c, capsize=3, label=r["method"])
            ax.annotate(short_label(r["setting"]), (r[key], r["psnr_mean"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.axhline(TARGET_DB, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylim(top=top)
        ax.grid(alpha=0.3)
    axes[0].axvline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("PSNR vs full model, dB (mean; bar: worst seed)")
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[0].legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


DEFAULT_PLOT = "docs/quality_speed.png"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--plot", default=None,
                   help=f"write the plot here (default: {DEFAULT_PLOT} for a run of every method at the "
                        "default seeds and steps, else none; --replot: that file)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--replot", default=None, metavar="JSON", help="only redraw the plot from a --json file")
    p.add_argument("--methods", default="*", metavar="GLOBS",
                   help="semicolon-separated globs on 'method: setting' (case-insensitive); only matching "
                        "rows run, plain torch.compile always does (default: all)")
    args = p.parse_args(argv)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        plot(saved["rows"], Path(args.plot or DEFAULT_PLOT), saved["title"])
        return
    if args.seeds < 1 or args.steps < 2:
        p.error("--seeds must be at least 1 and --steps at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    # many compiled copies of one forward: let each keep its own compiled code
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096
    globs = [g.strip().lower() for g in args.methods.split(";") if g.strip()]

    def wanted(name: str, setting: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{name}: {setting}".lower(), g) for g in globs)
    model = bundled()
    seeds = list(range(args.seeds))
    with torch.no_grad():
        methods = [plain_method(model)]
        methods += [jano_method(model, setting, options, args.steps) for setting, options in JANO_SETTINGS.items()
                    if wanted("jano", setting)]
        full_flops = count_work(model, methods[0].counted, 0, CALIBRATION_SEED, args.steps)
        methods += diffusers_methods(model, args.steps, full_flops, wanted)
        methods += dbcache_methods(model, args.steps, full_flops, wanted)
        methods = methods[:1] + [m for m in methods[1:] if wanted(m.name, m.setting)]
        if len(methods) == 1:
            p.error(f"--methods {args.methods!r} matches no method: globs on 'method: setting' separated by "
                    "';', e.g. 'jano*;DBCache*'")
        warm_up(model, methods, args.steps)
        references = measure(model, methods, seeds, args.steps)
    rows = summarise(methods, references)
    title = (f"bundled model ({model.num_image_tokens} image tokens), {args.steps} steps, {len(seeds)} seeds, "
             f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"\n{title}\n\n{table(rows)}\n")
    for r in rows:
        if r.get("notes"):
            print(f"- {r['method']}, {r['setting']}: {'; '.join(r['notes'])}")
    whole_run = (args.methods.strip() == "*" and args.seeds == p.get_default("seeds")
                 and args.steps == p.get_default("steps"))
    plot_path = args.plot or (DEFAULT_PLOT if whole_run else None)
    if plot_path:
        plot(rows, Path(plot_path), title)
        print(f"\nwrote {plot_path}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(title=title, rows=rows), indent=1))


if __name__ == "__main__":
    main()
