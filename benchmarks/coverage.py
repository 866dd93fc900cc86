"""Coverage table of issue 11: which diffusers DiT classes jano rewrites, and exactly.

    python benchmarks/coverage.py                          # all 56 classes, 3 configs
    python benchmarks/coverage.py --classes FluxTransformer2DModel,SD3Transformer2DModel
    python benchmarks/coverage.py --configs b1-fp32 --no-write
    python benchmarks/coverage.py --configs b1-fp32 --options '{"static_shapes": true}' --no-write

For each class of `coverage_models.TINY` (tiny random weights) and each configuration
(b=1 fp32, b=2 fp32, b=2 bf16; bf16 as `from_pretrained(torch_dtype=torch.bfloat16)` loads
it, the class's `_keep_in_fp32_modules` in fp32), after one eager call (the reference output):
  1. oracle (as /work/shared/checks/contract.py): compile with the "jano" backend on the
     eager lowering, `ctl.refresh()` and a full call that must equal eager (fp32 atol/rtol
     1e-4, bf16 3e-2); then `ctl.set_active(index)` for 0, 1, ~N/3, N-1 and N of the N image
     tokens, each partial call equal to the full output on the same inputs (every output
     tensor) and really partial, with `ctl.refresh()` and a full call between subsets;
  2. capture: "captured whole" when dynamo handed jano one graph in the full call; otherwise
     `torch._dynamo.explain` gives the graph count and the first graph-break reason
     (`--explain all` runs it on every configuration, ~3 s each).
Each configuration ends as one outcome: exact, wrong (max error), fallback (the controller's
reason; marked when a jano pass raised and `rewrite_graph` caught it), crash (the exception; a
crash inside jano is a bug) or eager-fails (the tiny config is wrong). One failure never stops the table: every class runs under its own try/except and
time limit. Writes `docs/coverage.md` unless --no-write.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coverage_models import TINY, TinyModel  # noqa: E402

import jano_compile  # noqa: E402
from jano_compile.geometry import geometry_for  # noqa: E402
from jano_compile.options import parse_options  # noqa: E402

log = logging.getLogger("coverage")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "docs", "coverage.md")


@dataclass(frozen=True)
class RunConfig:
    name: str
    batch: int
    dtype: torch.dtype
    tolerance: float          # atol = rtol


CONFIGS = {
    "b1-fp32": RunConfig("b1-fp32", 1, torch.float32, 1e-4),
    "b2-fp32": RunConfig("b2-fp32", 2, torch.float32, 1e-4),
    "b2-bf16": RunConfig("b2-bf16", 2, torch.bfloat16, 3e-2),
}

EXACT, WRONG, FALLBACK, CRASH, EAGER_FAILS = "exact", "wrong", "fallback", "crash", "eager-fails"


@dataclass
class Capture:
    """What dynamo made of the eager model: graphs, and the first break's reason."""
    graphs: int
    first_break: Optional[str] = None
    error: Optional[str] = None

    @property
    def whole(self) -> bool:
        return self.error is None and self.graphs == 1 and self.first_break is None


@dataclass
class Outcome:
    kind: str                         # EXACT, WRONG, FALLBACK, CRASH, EAGER_FAILS
    detail: str = ""                  # the reason, the error, or what differed
    max_error: Optional[float] = None
    num_image_tokens: Optional[int] = None
    in_jano: bool = False             # crash: the traceback passes through jano_compile
    graphs: Optional[int] = None      # graphs dynamo handed to jano in the full call
    partial_ran_full: bool = False    # exact, but a set_active call computed every token
    internal_error: bool = False      # fallback because a jano pass raised (caught by rewrite_graph)
    capture: Optional[Capture] = None
    seconds: float = 0.0
    grid: Optional[str] = None        # exact: the derived token grid, or why none (schedule off)
    skip_tail: bool = True            # exact: a step computing no image token runs a tail, not the graph


@dataclass
class ClassResult:
    cls: str
    note: str
    outcomes: dict = field(default_factory=dict)     # config name -> Outcome
    seconds: float = 0.0


class ClassTimeout(Exception):
    pass


# --------------------------------------------------------------------------- tensors
def cast(value, dtype, keep_fp32=frozenset(), name=None):
    """Floating tensors in `value` (nested lists, tuples, dicts) to `dtype`, except the
    inputs named in `keep_fp32` (timesteps stay fp32, as pipelines pass them)."""
    if name in keep_fp32:
        return value
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast(v, dtype, keep_fp32, k) for k, v in value.items()}
    return value


def to_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` in `dtype` as `from_pretrained(torch_dtype=dtype)` loads it: the parameters and
    buffers under the class's `_keep_in_fp32_modules` (time embedders, norms, RoPE) stay fp32."""
    model = model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and any(k in name.split(".") for k in keep):
                t.data = t.data.to(torch.float32)
    return model


def tensors(output) -> list:
    """Every tensor of a model output (tuple, list, dataclass-like), in order."""
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for o in output for t in tensors(o)]
    if isinstance(output, dict):
        return [t for o in output.values() for t in tensors(o)]
    return []


def max_difference(actual: list, expected: list, tol: float) -> tuple[bool, float]:
    """(all close, max abs error) over matching output tensors."""
    if len(actual) != len(expected):
        return False, float("inf")
    close, worst = True, 0.0
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return False, float("inf")
        a, e = a.float(), e.float()
        worst = max(worst, (a - e).abs().max().item() if a.numel() else 0.0)
        close &= bool(torch.allclose(a, e, atol=tol, rtol=tol, equal_nan=True))
    return close, worst


# --------------------------------------------------------------------------- the two checks
def capture(model, kwargs) -> Capture:
    """Dynamo's view of the eager model: number of graphs and the first break reason."""
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model)(**kwargs, return_dict=False)
    except Exception as e:  # noqa: BLE001 - dynamo itself failed on this model
        return Capture(graphs=0, error=_one_line(e))
    first = None
    if explained.break_reasons:
        reason = explained.break_reasons[0]
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame is not None else ""
        first = _short_break(reason.reason) + where
    return Capture(graphs=explained.graph_count, first_break=first)


def _short_break(reason: str) -> str:
    """Dynamo's graph-break text without its hints: "Dynamic shape operator: aten.nonzero.default"."""
    text = _squash(reason)
    title = text.split(" Explanation:")[0]
    if "Developer debug context:" in text:
        context = text.split("Developer debug context:")[1].split(" For more details")[0].strip()
        if context and len(context) < 80:
            return f"{title}: {context}"
    return title[:200]


def oracle(model, kwargs, config: RunConfig, seed: int, options: Optional[dict] = None) -> Outcome:
    """The contract check on one model and inputs (see the module docstring); `options`: more
    backend options (static shapes; static calls, the GPU's path under reduce-overhead; run
    eagerly)."""
    tol = config.tolerance
    try:
        with torch.no_grad():
            reference = tensors(model(**kwargs, return_dict=False))
    except Exception as e:  # noqa: BLE001 - the tiny config is wrong
        return Outcome(EAGER_FAILS, _one_line(e))
    torch._dynamo.reset()
    rng = random.Random(seed)
    graphs = None
    try:
        compiled = torch.compile(model, backend="jano", dynamic=False,
                                 options={"lowering": "eager", **(options or {})})
        ctl = jano_compile.controller(compiled)
        with torch.no_grad():
            ctl.refresh()
            full = tensors(compiled(**kwargs, return_dict=False))
            stats = ctl.stats()
            graphs = stats["graphs"]
            close, err = max_difference(full, reference, tol)
            if not close:
                kind = WRONG
                detail = f"full step != eager (max {err:.2e})"
                if not stats["rewritten"]:
                    detail += f"; not rewritten: {stats['fallback_reason']}"
                return Outcome(kind, detail, max_error=err, num_image_tokens=stats["num_image_tokens"],
                               graphs=graphs)
            if not stats["rewritten"]:
                reason = _squash(stats["fallback_reason"] or "(no reason given)")
                internal = any("internal error" in (r.reason or "") for r in ctl.reports)
                return Outcome(FALLBACK, reason, graphs=graphs, internal_error=internal)
            n = stats["num_image_tokens"]
            worst, failures, ran_full = 0.0, [], False
            sizes = sorted({0, 1, n // 3, max(n - 1, 0), n})
            for k in sizes:
                index = torch.tensor(sorted(rng.sample(range(n), k)), dtype=torch.long)
                ctl.set_active(index)
                partial = tensors(compiled(**kwargs, return_dict=False))
                last = ctl.last_call
                ran_full |= last is None or last.full or last.active != k
                close, err = max_difference(partial, full, tol)
                worst = max(worst, err)
                if not close:
                    failures.append(f"|S|={k}: max {err:.2e}")
                ctl.refresh()
                if k != sizes[-1]:
                    compiled(**kwargs, return_dict=False)
    except ClassTimeout:
        raise
    except Exception as e:  # noqa: BLE001 - recorded as a crash
        frames = traceback.extract_tb(e.__traceback__)
        in_jano = any(("jano_compile" in f.filename or "/passes/" in f.filename) for f in frames)
        return Outcome(CRASH, _one_line(e), in_jano=in_jano, graphs=graphs)
    if failures:
        return Outcome(WRONG, "partial != full: " + ", ".join(failures), max_error=worst, num_image_tokens=n,
                       graphs=graphs)
    return Outcome(EXACT, f"N={n}" + (", a partial call ran as a full step" if ran_full else ""),
                   max_error=worst, num_image_tokens=n, graphs=graphs, partial_ran_full=ran_full,
                   grid=derived_grid(model, kwargs, ctl, n),
                   skip_tail=all((r.skip_steps or "").startswith("a tail") for r in ctl.reports if r.rewritten))


def derived_grid(model, kwargs, ctl, n: int) -> str:
    """What the automatic schedule would cut the latent into (geometry.py), as "f x h x w",
    or "none: <why>" where it cannot (the schedule stays off there)."""
    from jano_compile.geometry import image_tokens
    graph = next(iter(ctl._graphs.values()))
    roles = graph.roles
    try:
        from jano_compile.passes.input_roles import ROLE_NAMES
        ids = next((kwargs[name] for name in ROLE_NAMES["position_ids"] if name in kwargs), None)
        ids = ids if roles.position_ids is not None else None
        rows = graph.latent_rows.of_arguments(kwargs) if graph.latent_rows is not None else None
        tokens, grid = image_tokens(geometry_for(model), kwargs["hidden_states"], ids, graph.grid_hint, n,
                                    rows)
    except Exception as e:  # noqa: BLE001 - recorded as the reason
        return f"none: {type(e).__name__}: {str(e)[:120]}"
    expected = n if rows is None else rows.numel()
    if tokens.shape[1] != expected:
        return f"none: {tokens.shape[1]} tokens on the grid {grid}, the graph has {expected}"
    slots = f" (+ {n - expected} slots)" if expected < n else ""
    return " x ".join(str(g) for g in grid) + slots


def run_class(tiny: TinyModel, configs: list, capture_configs: set, seed: int = 0,
              options: Optional[dict] = None) -> ClassResult:
    result = ClassResult(tiny.cls, tiny.note)
    start = time.perf_counter()
    for config in configs:
        t0 = time.perf_counter()
        torch._dynamo.reset()
        try:
            torch.manual_seed(seed)
            model, kwargs = tiny.build(config.batch)
            model = to_dtype(model, config.dtype)
            kwargs = cast(kwargs, config.dtype, tiny.keep_fp32)
            outcome = oracle(model, kwargs, config, seed, options)
            graphs = outcome.graphs
            if outcome.kind != EAGER_FAILS and (config.name in capture_configs or graphs != 1):
                outcome.capture = capture(model, kwargs)
            elif graphs is not None:
                outcome.capture = Capture(graphs=graphs)
        except ClassTimeout:
            outcome = Outcome(CRASH, "timed out (--class-timeout)")
            result.outcomes[config.name] = outcome
            break
        except Exception as e:  # noqa: BLE001 - building the model or inputs failed
            outcome = Outcome(EAGER_FAILS, f"build: {_one_line(e)}")
        finally:
            torch._dynamo.reset()
        outcome.seconds = time.perf_counter() - t0
        result.outcomes[config.name] = outcome
        cap = outcome.capture
        graphs = "" if cap is None else f" | graphs={cap.graphs}"
        broke = f" break: {cap.first_break[:100]}" if cap is not None and cap.first_break else ""
        log.info("  %s %-8s %-11s %5.1fs %s%s%s", tiny.cls, config.name, outcome.kind, outcome.seconds,
                 outcome.detail[:150], graphs, broke)
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- table
def _squash(text: str) -> str:
    return " ".join(str(text).split())


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {_squash(str(e))[:300]}"


def _cell(o: Optional[Outcome]) -> str:
    if o is None:
        return "-"
    if o.kind == EXACT:
        return "exact" if not o.partial_ran_full else "exact (partial ran full)"
    if o.kind == WRONG:
        return f"**WRONG** ({o.max_error:.1e})"
    if o.kind == CRASH:
        return "**crash** (jano)" if o.in_jano else "**crash**"
    if o.kind == FALLBACK and o.internal_error:
        return "**fallback** (jano internal error)"
    return o.kind


def _captured(result: ClassResult) -> str:
    caps = [o.capture for o in result.outcomes.values() if o.capture is not None]
    if not caps:
        return "-"
    if all(c.whole for c in caps):
        return "yes"
    c = next(c for c in caps if not c.whole)
    return "no (dynamo error)" if c.error else f"no ({c.graphs} graphs)"


def _reason(result: ClassResult) -> str:
    """The reasons of the non-exact outcomes (one per distinct text), then the first graph break."""
    seen, keys = [], set()
    for name, o in result.outcomes.items():
        key = re.sub(r"\d+", "#", o.detail)      # the same reason at another batch size or shape
        if o.kind != EXACT and o.detail and key not in keys:
            keys.add(key)
            seen.append((name, o.detail))
    parts = [d if len(seen) == 1 else f"{n}: {d}" for n, d in seen]
    caps = [o.capture for o in result.outcomes.values() if o.capture is not None and not o.capture.whole]
    if caps:
        c = caps[0]
        parts.append(f"graph break: {c.first_break}" if c.first_break else f"dynamo: {c.error}")
    if result.note:
        parts.append(f"config: {result.note}")
    text = "; ".join(parts)
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def totals(results: list, configs: list) -> dict:
    out = {c.name: {} for c in configs}
    for r in results:
        for name, o in r.outcomes.items():
            out[name][o.kind] = out[name].get(o.kind, 0) + 1
    return out


def summary_lines(results: list, configs: list) -> list:
    names = [c.name for c in configs]
    tot = totals(results, configs)
    kinds = [EXACT, WRONG, FALLBACK, CRASH, EAGER_FAILS]
    lines = ["| outcome | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(str(tot[n].get(k, 0)) for n in names) + " |")
    all_exact = [r for r in results if all(r.outcomes.get(n) and r.outcomes[n].kind == EXACT for n in names)]
    whole = [r for r in results if _captured(r) == "yes"]
    whole_exact = [r for r in whole if r in all_exact]
    lines += ["",
              f"- classes: {len(results)}; exact in every configuration run: {len(all_exact)}",
              f"- captured whole by dynamo (one graph, no break): {len(whole)} of "
              f"{sum(_captured(r) != '-' for r in results)}; of those exact in every configuration: "
              f"{len(whole_exact)} ({100 * len(whole_exact) / max(len(whole), 1):.0f}%, target 90%)",
              f"- crashes inside jano: "
              f"{sum(o.kind == CRASH and o.in_jano for r in results for o in r.outcomes.values())}; "
              f"fallbacks caused by an internal error of a jano pass (caught, the graph ran unrewritten): "
              f"{', '.join(r.cls for r in results if any(o.internal_error for o in r.outcomes.values())) or 'none'}"]
    rewritten = [r for r in results if any(o.kind in (EXACT, WRONG) for o in r.outcomes.values())]
    no_grid = [r.cls for r in rewritten
               if any((o.grid or "none").startswith("none") for o in r.outcomes.values() if o.kind == EXACT)]
    lines.append(f"- rewritten classes whose token grid is not derived (automatic schedule off, "
                 f"`set_active` only): {len(no_grid)} of {len(rewritten)}"
                 + (f": {', '.join(no_grid)}" if no_grid else ""))
    no_tail = [r.cls for r in rewritten if any(not o.skip_tail for o in r.outcomes.values() if o.kind == EXACT)]
    lines.append(f"- rewritten classes without a skip tail (a step computing no image token runs the whole "
                 f"graph on none, uncompiled): {len(no_tail)} of {len(rewritten)}"
                 + (f": {', '.join(no_tail)}" if no_tail else ""))
    return lines


def write_markdown(results: list, configs: list, path: str, elapsed: float,
                   options: Optional[dict] = None) -> None:
    import diffusers
    names = [c.name for c in configs]
    lines = [
        "# Coverage: diffusers DiT classes under the jano backend",
        "",
        "Generated by `python benchmarks/coverage.py` (issue 11); do not edit by hand.",
        f"diffusers {diffusers.__version__}, torch {torch.__version__}, "
        f"{(options or {}).get('lowering', 'eager')} lowering, "
        + (f"backend options {json.dumps(options)}, " if options else "") +
        f"tiny random-weight instances from `benchmarks/coverage_models.py`; "
        f"run took {elapsed / 60:.1f} min on {os.cpu_count()} CPU cores.",
        "",
        "Each configuration: a full step equal to eager, then partial steps (0, 1, ~N/3, N-1, N active image "
        "tokens) equal to the full step (fp32 atol/rtol 1e-4, bf16 3e-2). *exact*: rewritten and every check "
        "passed; *fallback*: not rewritten, runs as eager (reason given); *WRONG*: a check failed (max error); "
        "*crash*: an exception (*jano*: raised inside jano); *eager-fails*: the tiny config is wrong. "
        "*Captured whole*: dynamo hands jano one graph (after one eager call, which fills the models' "
        "lazily built tables); otherwise the first graph-break reason from `torch._dynamo.explain`.",
        "",
        "## Totals",
        "",
        *summary_lines(results, configs),
        "",
        "## Classes",
        "",
        "| class | captured whole? | " + " | ".join(names) + " | reason |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for r in sorted(results, key=lambda r: r.cls):
        cells = " | ".join(_cell(r.outcomes.get(n)) for n in names)
        lines.append(f"| {r.cls} | {_captured(r)} | {cells} | {_reason(r)} |")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main
def _pick(arg: Optional[str], known: dict, what: str) -> list:
    if not arg:
        return list(known)
    picked = [a.strip() for a in arg.split(",") if a.strip()]
    unknown = [a for a in picked if a not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return picked


def _quiet(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not verbose:
        warnings.filterwarnings("ignore")
        for name in ("jano_compile", "torch._dynamo", "torch._inductor", "diffusers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)


def _on_alarm(signum, frame):
    raise ClassTimeout()


def _worker_init(verbose: bool, threads: int) -> None:
    _quiet(verbose)
    torch.set_num_threads(threads)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)


def _run_one(name: str, config_names: list, capture_names: set, timeout: float,
             options: Optional[dict] = None) -> ClassResult:
    """One class in this process, under a time limit (SIGALRM, where the platform has it)."""
    configs = [CONFIGS[c] for c in config_names]
    alarm = bool(timeout) and hasattr(signal, "SIGALRM")
    if alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return run_class(TINY[name], configs, capture_names, options=options)
    except ClassTimeout:      # raised outside a configuration's own handler
        return ClassResult(name, TINY[name].note, {config_names[0]: Outcome(CRASH, "timed out")})
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _run_all(classes: list, config_names: list, capture_names: set, timeout: float, jobs: int,
             verbose: bool, options: Optional[dict] = None) -> list:
    """Results in the order of `classes`; `jobs` > 1 runs classes in worker processes (dynamo
    tracing is single-threaded Python, so two processes use two cores)."""
    done = {}

    def report(result: ClassResult) -> None:
        done[result.cls] = result
        cells = ", ".join(f"{n}={o.kind}" for n, o in result.outcomes.items())
        log.info("[%d/%d] %-42s %5.1fs  %s", len(done), len(classes), result.cls, result.seconds, cells)

    if jobs <= 1:
        _worker_init(verbose, torch.get_num_threads())
        for name in classes:
            log.info("%s", name)
            report(_run_one(name, config_names, capture_names, timeout, options))
        return [done[n] for n in classes]

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    def pool(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(verbose, 1))

    with pool(jobs) as executor:
        futures = [executor.submit(_run_one, n, config_names, capture_names, timeout, options)
                   for n in classes]
        try:
            for future in as_completed(futures):
                report(future.result())
        except BrokenProcessPool:      # a worker died (a native crash); the rest run one by one below
            pass
    for name in [n for n in classes if n not in done]:
        try:
            with pool(1) as executor:
                report(executor.submit(_run_one, name, config_names, capture_names, timeout, options).result())
        except BrokenProcessPool:
            report(ClassResult(name, TINY[name].note,
                               {config_names[0]: Outcome(CRASH, "the worker process died")}))
    return [done[n] for n in classes]


def _json_object(text: str) -> dict:
    """--options: a JSON object of backend options."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, e.g. '{{\"static_shapes\": true}}', got {text!r}")
    try:    # a wrong key or value now, not as a "crash inside jano" of every class
        parse_options(None, value)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", help="comma-separated class names (default: all 56)")
    parser.add_argument("--configs", help=f"comma-separated, of {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--explain", default="none",
                        help="configurations to run torch._dynamo.explain on even when dynamo handed jano one "
                             "graph: 'all', 'none' (default) or a comma list; a configuration with more or fewer "
                             "graphs is always explained")
    parser.add_argument("--options", type=_json_object, default=None,
                        help="more backend options as JSON, e.g. '{\"static_shapes\": true}' (the opt-in "
                             "full-step graph and static lengths) or '{\"cuda_graphs\": true}' (the static calls "
                             "that reduce-overhead captures on a GPU)")
    parser.add_argument("--class-timeout", type=float, default=240.0, help="seconds per class (0: none)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core; 1: run in this process)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="markdown table path")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("-v", "--verbose", action="store_true", help="jano's and dynamo's warnings too")
    args = parser.parse_args(argv)
    _quiet(args.verbose)

    classes = _pick(args.classes, TINY, "class")
    config_names = _pick(args.configs, CONFIGS, "config")
    configs = [CONFIGS[c] for c in config_names]
    if args.explain == "all":
        capture_names = set(config_names)
    elif args.explain == "none":
        capture_names = set()
    else:
        capture_names = set(_pick(args.explain, CONFIGS, "config"))

    if args.options and args.out == DEFAULT_OUT and not args.no_write:
        parser.error(f"--options: {DEFAULT_OUT} holds the run without options; give --out PATH or --no-write")

    start = time.perf_counter()
    results = _run_all(classes, config_names, capture_names, args.class_timeout,
                       min(args.jobs, len(classes)), args.verbose, args.options)
    elapsed = time.perf_counter() - start

    for line in summary_lines(results, configs):
        log.info("%s", line)
    log.info("total %.1f min", elapsed / 60)
    if not args.no_write:
        write_markdown(results, configs, args.out, elapsed, args.options)
        log.info("wrote %s", args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1, default=str)
    crashed = any(o.kind == CRASH and o.in_jano for r in results for o in r.outcomes.values())
    wrong = any(o.kind == WRONG for r in results for o in r.outcomes.values())
    return 1 if crashed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
