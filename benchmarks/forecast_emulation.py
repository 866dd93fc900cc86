"""Output-level emulation of partial-token schedules with forecast outputs (issue 9).

    python benchmarks/forecast_emulation.py [--out docs/forecast_emulation.md] [--plot docs/forecast_emulation.png]
                                            [--threads 1] [--json rows.json] [--replot rows.json] [--quick]
                                            [--only work] [--seeds cal|held|all] [--variants]

Every step runs the full bundled model eagerly (v_full [B, N, C]); a schedule decides which
image tokens count as computed at that step. A computed token takes v_full and enters its
own history (last 3 computed outputs, fp32, with their step index and time); every other
token takes HOLD (its last computed output) or FORECAST (Newton divided differences of
order 1 or 2 over that token's own computation times, extrapolated to the current time;
equal times fall back to a lower order). The Euler loop integrates that velocity, so the
model is called along each emulated trajectory.

Because the model always runs in full, skipped tokens' K/V are always fresh: for schedules
that compute only part of the tokens this is an UPPER BOUND on what partial-token recompute
(held K/V) can reach. Steps that compute all tokens or none (warm-up, cool-down, uniform
aligned periods, whole-step skips) are exact, since no stale K/V exists there.

Schedules (W full warm-up steps, C full cool-down steps, k = step - W):
  jano       the reference: full every 12, medium+active every 4, active every step,
             levels from the warm-up analysis (quantile 40% static / 30% medium)
  periods    per-level periods (static, medium, active); level L is computed when
             k % p_L' == 0 for some L' <= L (nested, as schedule.step_phase does); a step
             where nothing is due computes no token (whole-step skip)
  uniform    one period p for all tokens, aligned (a full step, then p-1 forecast steps)
  staggered  one period p, tokens split into p groups by analysis block (diagonal
             stripes, a checkerboard for p=2); every step computes one group
  errrank    per-level periods with levels re-ranked every step by the measured forecast
             error (per analysis block, EMA over the observations), same 40/30 quantiles
  work       the runtime's work budget, JanoConfig(work=w): the schedule is
             jano_compile's own AdaptiveSchedule (adaptive.py `_due_regions`, periods.py
             RegionPeriods / ErrorEstimate / assign_periods / adaptive_budget), one per
             seed (a generation of batch 1), fed the warm-up latents and, when it asks
             (after each full step), every token's latest forecast error rate as the
             compiled graph records it (passes/forecast.py: mean over channels of
             |fresh - forecast| / |sigma_now - sigma_last|). First and last adaptive steps
             full; blocks with k % p_b == 0 computed; all due: full; none due: no call.
             Variants: RegionPeriods keyword arguments (alpha, horizon_power, periods).

The old "budget" family (per-block periods re-assigned every step from the
horizon-profile-normalised error below, its own Lagrangian) is replaced by "work": the
runtime cannot see errors every step nor a horizon profile, and one budget schedule in the
tables should be the one users get.

Forecast error estimate (errrank, and reported for every forecasting row): on a
computed token whose forecast used order e over horizon h = s - (its last computed step),
rate = |forecast - v_full|_2 / phi_e(h), where phi_e(h) is the mean error of an order-e
forecast at horizon h relative to horizon 1, measured on the calibration seeds' full runs
(horizon_profile; the error has a floor at h = 1, so the Newton product would not do).
Per block: mean over its observed tokens, EMA with alpha 0.5 (fixed, not tuned). Spearman: the block estimate in force at step s (built from steps < s) against the
mean rate observed at steps >= s, per held-out seed, averaged over s in the adaptive phase,
then over seeds.

Protocol: calibration seeds 1000..1003 (one per class) choose the settings named in the
summary; the table reports held-out seeds 0..7 (class = seed % 4, as quality_speed.py).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from jano_compile.adaptive import AdaptiveSchedule
from jano_compile.analyzer import analyze, block_token_counts, levels_by_fraction
from jano_compile.clock import Tick
from jano_compile.config import resolve_config
from jano_compile.metrics import psnr, ssim
from jano_compile.models import bundled
from jano_compile.models.bundled import flow_sigmas
from jano_compile.periods import RegionPeriods

CAL_SEEDS = (1000, 1001, 1002, 1003)
HELD_OUT_SEEDS = tuple(range(8))
EMA_ALPHA = 0.5
ORACLE_HORIZON = 2
STEPS = 50
MARK_BEGIN = "<!-- results:begin (written by benchmarks/forecast_emulation.py) -->"
MARK_END = "<!-- results:end -->"
# quoted from quality_speed.py runs (compiled, not rerun here)
QUOTED = [("jano compiled default (quality_speed.py, FLOP work)", 0.53, 32.5, 28.5),
          ("TaylorSeer lite, interval 2 (quality_speed.py, FLOP work)", 0.52, 47.6, 44.0)]


@dataclass(frozen=True)
class Setting:
    family: str                    # jano | periods | uniform | staggered | errrank | work
    warmup: int
    order: int                     # 0 = hold
    periods: tuple = ()            # (static, medium, active) or (p,)
    budget: float = 0.0            # work: JanoConfig.work
    axis: str = "sigma"            # sigma | step
    cooldown: int = 2
    shift: float = 1.0
    estimator: str = "norm"        # errrank: "norm" (rate / horizon profile) or "raw" (error as seen)
    anchor: str = "start"          # periods count from the first adaptive step ("start"), back from the
                                   # last ("end"), or from the first with the last computed too ("both")
    variant: tuple = ()            # work: ((RegionPeriods keyword, value), ...) over the built defaults

    @property
    def reuse(self) -> str:
        return "hold" if self.order == 0 else f"forecast o{self.order}"

    @property
    def schedule(self) -> str:
        p = "/".join(map(str, self.periods))
        return {"jano": "Jano ref: full/12, medium/4, active/1",
                "periods": f"periods {p} (warm-up levels)",
                "uniform": f"uniform {p}, aligned",
                "staggered": f"uniform {p}, staggered",
                "errrank": f"periods {p} (levels by {'raw ' if self.estimator == 'raw' else ''}forecast error)",
                "work": f"work {self.budget:.2f}" + self.variant_label}[self.family]

    @property
    def variant_label(self) -> str:
        v = dict(self.variant)
        parts = []
        if "periods" in v:
            parts.append("periods " + "/".join(map(str, v["periods"])))
        if "alpha" in v:
            parts.append(f"alpha {v['alpha']:g}")
        if "horizon_power" in v:
            parts.append(f"error ~ horizon^{v['horizon_power']:g}")
        if v.get("signed"):
            parts.append("signed sigma horizon (NaN rates)")
        return f" ({', '.join(parts)})" if parts else " (as built)"

    @property
    def label(self) -> str:
        return self.schedule + {"start": "", "end": ", end-aligned", "both": ", last adaptive step full"}[self.anchor]

    @property
    def key(self) -> str:
        return f"{self.label} | W{self.warmup} C{self.cooldown} | {self.reuse} | {self.axis} | shift {self.shift:g}"


# ------------------------------------------------------------------------------ forecast
def forecast(V, T, cnt, t, order):
    """Newton forecast of every token from its own history.

    V [3, B, N, C] last computed outputs (0 newest), T [3, B, N] their times on the chosen
    axis, cnt [B, N] valid entries. Returns (prediction [B, N, C], the order each token's
    forecast used [B, N]: lower where its history is short or two times coincide)."""
    pred = V[0].clone()
    used = torch.zeros(cnt.shape, dtype=torch.long)
    if order >= 1:
        ok1 = (cnt >= 2) & (T[0] != T[1])
        d01 = (V[0] - V[1]) / torch.where(ok1, T[0] - T[1], 1.0)[..., None]
        pred = pred + torch.where(ok1[..., None], (t - T[0])[..., None] * d01, 0.0)
        used = torch.where(ok1, 1, used)
        if order >= 2:
            ok2 = ok1 & (cnt >= 3) & (T[1] != T[2]) & (T[0] != T[2])
            d12 = (V[1] - V[2]) / torch.where(ok2, T[1] - T[2], 1.0)[..., None]
            d012 = (d01 - d12) / torch.where(ok2, T[0] - T[2], 1.0)[..., None]
            pred = pred + torch.where(ok2[..., None], ((t - T[0]) * (t - T[1]))[..., None] * d012, 0.0)
            used = torch.where(ok2, 2, used)
    return pred, used


HORIZON_MAX = 12


def horizon_profile(velocities: torch.Tensor) -> torch.Tensor:
    """Mean forecast error at horizon h relative to horizon 1, ``[3 orders, HORIZON_MAX + 1]``
    (column 0 unused), from full-model velocities ``[steps, B, N, C]``: order k forecasts
    step s from steps s - h, ..., s - (k+1) h; each ratio is taken over the same steps s.

    On the bundled model the error does not vanish as h -> 1 (the velocity jitters from
    step to step), so dividing an error by the Newton product (s - s_0)(s - s_1) would
    make short horizons look worse; dividing by this profile compares blocks observed at
    different horizons."""
    steps = velocities.shape[0]
    out = torch.ones(3, HORIZON_MAX + 1, dtype=torch.float64)
    coefficients = {0: (1.0,), 1: (2.0, -1.0), 2: (3.0, -3.0, 1.0)}
    for k, coef in coefficients.items():
        for h in range(2, HORIZON_MAX + 1):
            first = (k + 1) * h
            if first >= steps:
                out[k, h] = out[k, h - 1] * (h / (h - 1)) ** (k + 1)
                continue
            err = {}
            for hh in (1, h):
                err[hh] = torch.stack([
                    (sum(c * velocities[s - (i + 1) * hh] for i, c in enumerate(coef)) - velocities[s]).norm(dim=-1).mean()
                    for s in range(first, steps)]).double().mean()
            out[k, h] = err[h] / err[1]
    return out


def self_test() -> None:
    """Order 1 is exact on a line, order 2 on a parabola, at uneven per-token times; order
    0 is hold; equal times give no inf/NaN."""
    times = torch.tensor([[9.0, 5.0, 1.0], [7.0, 3.0, 2.0]]).T[:, None, :]     # [3, 1, 2]
    f1 = lambda t: 2.0 - 0.5 * t                                                # noqa: E731
    f2 = lambda t: 1.0 + 0.3 * t - 0.2 * t * t                                  # noqa: E731
    cnt = torch.full((1, 2), 3)
    for f, order in ((f1, 1), (f2, 2)):
        V = f(times)[..., None]
        pred, _ = forecast(V, times, cnt, torch.tensor(12.0), order)
        assert torch.allclose(pred[..., 0], f(torch.tensor(12.0)).expand(1, 2), atol=1e-4), (order, pred)
    V = f2(times)[..., None]
    pred, _ = forecast(V, times, cnt, torch.tensor(12.0), 0)
    assert torch.equal(pred, V[0])
    same = torch.full_like(times, 4.0)
    pred, _ = forecast(V, same, cnt, torch.tensor(12.0), 2)
    assert torch.isfinite(pred).all() and torch.equal(pred, V[0])


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    keep = torch.isfinite(a) & torch.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    return float(torch.corrcoef(torch.stack([ranks(a[keep]), ranks(b[keep])]))[0, 1])


# ------------------------------------------------------------------------------ emulator
class Emulator:
    """The transformer callable handed to `model.sample`: runs the full model, keeps only
    the scheduled tokens' fresh outputs, reuses (holds or forecasts) the others."""

    def __init__(self, model, setting: Setting, batch: int, steps: int, profile: torch.Tensor):
        self.model, self.cfg, self.n, self.profile = model, setting, steps, profile
        self.sig = flow_sigmas(steps, setting.shift).float()
        rows, cols = model.grid
        self.N, C = rows * cols, model.spec.token_channels
        self.grid = (1, rows, cols)
        self.jano = resolve_config("flux", {"warmup_steps": max(setting.warmup, 2),
                                            "cooldown_steps": setting.cooldown,
                                            "num_inference_steps": steps})
        _, bh, bw = self.jano.block_size_for(self.grid)
        self.block_shape = (1, math.ceil(rows / bh), math.ceil(cols / bw))
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        bi, bj = (r // bh).flatten(), (c // bw).flatten()
        self.block_of = bi * self.block_shape[2] + bj                              # [N]
        self.nb = self.block_shape[1] * self.block_shape[2]
        self.block_counts = torch.bincount(self.block_of, minlength=self.nb).double()
        self.block_tokens = block_token_counts(self.grid, (1, bh, bw))
        self.stripe = None
        if setting.family == "staggered":
            p = setting.periods[0]
            self.stripe = ((bi + bj) % p)                                           # [N]
        B = batch
        self.V = torch.zeros(3, B, self.N, C)
        self.T = torch.zeros(3, B, self.N)
        self.S = torch.zeros(3, B, self.N)
        self.cnt = torch.zeros(B, self.N, dtype=torch.long)
        self.step = 0
        self.warm: list[torch.Tensor] = []
        self.levels: Optional[torch.Tensor] = None          # [B, N] 0 static .. 2 active
        self.analysis_scores: Optional[torch.Tensor] = None  # [B, nb]
        self.schedules: list[AdaptiveSchedule] = []         # work: the runtime's schedule, one per seed
        self.signed = False
        if setting.family == "work":
            variant = dict(setting.variant)
            self.signed = bool(variant.pop("signed", False))
            config = resolve_config("flux", {"warmup_steps": setting.warmup, "cooldown_steps": setting.cooldown,
                                             "num_inference_steps": steps, "work": setting.budget})
            self.schedules = [VariantSchedule(config, variant) for _ in range(batch)]
        self.token_rate = torch.full((batch, self.N), float("nan"), dtype=torch.float64)   # graph's forecast_error
        self.est = torch.full((B, self.nb), float("nan"), dtype=torch.float64)
        self.est_log: dict[int, torch.Tensor] = {}
        self.obs_log = torch.full((steps, B, self.nb), float("nan"), dtype=torch.float64)
        self.computed = torch.zeros(steps, B)               # computed image tokens per step
        self.full: list[torch.Tensor] = []                   # v_full per step (for the oracle target)

    # ---- schedule
    def _analyse(self) -> None:
        scores, levels = [], []
        for b in range(self.V.shape[1]):
            a = analyze([x[b] for x in self.warm], self.grid, self.jano)
            scores.append(a.block_scores.flatten().double())
            levels.append(a.token_levels)
        self.analysis_scores = torch.stack(scores)
        self.levels = torch.stack(levels)
        self.warm = []

    def _levels_from_estimate(self) -> torch.Tensor:
        est = torch.nan_to_num(self.est, nan=float("inf"))
        out = []
        for b in range(est.shape[0]):
            block_levels = levels_by_fraction(est[b].view(self.block_shape), self.block_tokens,
                                              self.jano.static_fraction, self.jano.medium_fraction)
            out.append(block_levels.flatten()[self.block_of])
        return torch.stack(out)

    def due(self, s: int) -> torch.Tensor:
        cfg, B = self.cfg, self.V.shape[1]
        if s < cfg.warmup or s >= self.n - cfg.cooldown:
            return torch.ones(B, self.N, dtype=torch.bool)
        last = self.n - cfg.cooldown - 1
        k = (last - s) if cfg.anchor == "end" else s - cfg.warmup
        if cfg.family == "uniform":
            return torch.full((B, self.N), k % cfg.periods[0] == 0 or (cfg.anchor == "both" and s == last))
        if cfg.family == "staggered":
            return (self.stripe == k % cfg.periods[0]).expand(B, self.N).clone()
        periods = (12, 4, 1) if cfg.family == "jano" else cfg.periods
        # level L computed when some level L' <= L is due (nested, as schedule.step_phase)
        lowest_due = next((L for L, p in enumerate(periods) if k % p == 0), 3)
        return self.levels >= lowest_due

    # ---- the callable
    def __call__(self, hidden_states, timestep, **kwargs):
        s, cfg = self.step, self.cfg
        v = self.model.transformer(hidden_states=hidden_states, timestep=timestep, **kwargs)[0].float()
        self.full.append(v)
        if s < cfg.warmup:
            self.warm.append(hidden_states.detach().float().clone())
        if s == cfg.warmup:
            self._analyse()
        if s >= cfg.warmup:
            self.est_log[s] = self.est.clone()
            if cfg.family == "errrank":
                self.levels = self._levels_from_estimate()
        t = self.sig[s] if cfg.axis == "sigma" else torch.tensor(float(s))
        mask = self._decide_work(s, hidden_states) if cfg.family == "work" else self.due(s)
        pred, used = forecast(self.V, self.T, self.cnt, t, cfg.order)
        # forecast error observed on computed tokens, relative to the mean error at that
        # horizon and order (horizon_profile), so blocks seen at different horizons compare
        seen = mask & (self.cnt >= 1)
        horizon = (float(s) - self.S[0]).long().clamp(1, HORIZON_MAX)
        rate = (pred - v).norm(dim=-1).double()
        if cfg.estimator == "norm":
            rate = rate / self.profile[used, horizon]
        rate = torch.where(seen, rate, 0.0)
        total = torch.zeros(rate.shape[0], self.nb, dtype=torch.float64).index_add_(1, self.block_of, rate)
        count = torch.zeros_like(total).index_add_(1, self.block_of, seen.double())
        obs = torch.where(count > 0, total / count.clamp(min=1), float("nan"))
        self.obs_log[s] = obs
        self._record_rate(s, mask, pred, v)
        self.est = torch.where(torch.isnan(self.est), obs,
                               torch.where(torch.isnan(obs), self.est,
                                           (1 - EMA_ALPHA) * self.est + EMA_ALPHA * obs))
        out = torch.where(mask[..., None], v, pred)
        # push computed tokens into their history
        m3, m = mask[None, ..., None], mask[None]
        self.V = torch.where(m3, torch.cat([v[None], self.V[:2]]), self.V)
        self.T = torch.where(m, torch.cat([t.expand_as(self.T[0])[None], self.T[:2]]), self.T)
        self.S = torch.where(m, torch.cat([torch.full_like(self.S[0], float(s))[None], self.S[:2]]), self.S)
        self.cnt = torch.where(mask, (self.cnt + 1).clamp(max=3), self.cnt)
        self.computed[s] = mask.sum(1).float()
        self.step += 1
        return (out.to(hidden_states.dtype),)

    def _decide_work(self, s: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, N] computed tokens at step s: each seed's AdaptiveSchedule decides, reading
        the graph's error state (token_rate) when it asks for it. Logs the per-block
        estimate in force (what the periods were assigned from) as est_log[s]."""
        sigma = float(self.sig[s])
        mask = torch.zeros(len(self.schedules), self.N, dtype=torch.bool)
        for b, schedule in enumerate(self.schedules):
            decision = schedule.decide(Tick(1, s, 0, sigma), None, lambda b=b: self.token_rate[b].clone())
            if schedule.wants_latents(decision):
                schedule.record_latents(hidden_states[b:b + 1], self.grid)
            mask[b] = True if decision.index is None else \
                torch.zeros(self.N, dtype=torch.bool).index_fill_(0, decision.index, True)
            if s >= self.cfg.warmup and schedule.periods is not None:
                self.est_log[s][b] = schedule.periods.estimate.filled(schedule.periods.prior)
            elif s >= self.cfg.warmup:
                self.est_log[s][b] = float("nan")
        return mask

    def _record_rate(self, s: int, mask: torch.Tensor, pred: torch.Tensor, v: torch.Tensor) -> None:
        """The graph's forecast_error state (passes/forecast.py forecast_error_rate): each
        computed token's mean over channels of |fresh - forecast| per unit of sigma since
        its last computation; NaN where never computed before. `signed`: the runtime's
        sign (sigma falls, so every rate is NaN). For the work family, obs_log[s] is
        the block mean of these rates (what the schedule can observe)."""
        horizon = (self.sig[s] - self.T[0]).double() if self.cfg.axis == "sigma" else float(s) - self.S[0].double()
        if not self.signed:
            horizon = horizon.abs()
        error = (v - pred).abs().mean(-1).double()
        rate = torch.where((self.cnt >= 1) & (horizon > 0), error / horizon, float("nan"))
        self.token_rate = torch.where(mask, rate, self.token_rate)
        if self.cfg.family == "work":
            seen = mask & torch.isfinite(rate)
            total = torch.zeros(rate.shape[0], self.nb, dtype=torch.float64).index_add_(
                1, self.block_of, torch.where(seen, rate, 0.0))
            count = torch.zeros_like(total).index_add_(1, self.block_of, seen.double())
            self.obs_log[s] = torch.where(count > 0, total / count.clamp(min=1), float("nan"))

    # ---- after the run
    def work(self) -> dict:
        cfg = self.cfg
        per_step = self.computed / self.N                                     # [steps, B]
        mid = per_step[cfg.warmup:self.n - cfg.cooldown]
        return dict(work=per_step.mean(0), work_adaptive=mid.mean(0) if len(mid) else per_step.mean(0),
                    calls=(self.computed > 0).float().mean(0))

    def oracle_block_error(self, horizon: int = ORACLE_HORIZON) -> torch.Tensor:
        """``[steps, B, nb]``: per block, the error an order-k forecast over evenly spaced
        points ``horizon`` apart would make at each step, from the full-model velocities
        along this run's trajectory (NaN where the history is too short). Schedule
        independent: the target the running estimate should rank."""
        k = self.cfg.order
        coef = {0: (1.0,), 1: (2.0, -1.0), 2: (3.0, -3.0, 1.0)}[k]
        out = torch.full((self.n, self.V.shape[1], self.nb), float("nan"), dtype=torch.float64)
        for s in range((k + 1) * horizon, self.n):
            pred = sum(c * self.full[s - (i + 1) * horizon] for i, c in enumerate(coef))
            err = (pred - self.full[s]).norm(dim=-1).double()
            out[s] = torch.zeros_like(out[s]).index_add_(1, self.block_of, err) / self.block_counts
        return out

    def spearman_stats(self, rows: list[int]) -> dict:
        """Per row, the mean over steps s of the adaptive phase of Spearman(block estimate
        in force at s, oracle block error at steps >= s); the same at s = W for the
        estimate frozen at the end of warm-up and for the warm-up analysis score; and,
        for comparison, against the errors the schedule itself observed at steps >= s
        (confounded: a block given a short period shows small errors)."""
        cfg = self.cfg
        oracle = self.oracle_block_error()
        out = dict(rho_running=[], rho_warmup_err=[], rho_analysis=[], rho_observed=[])
        for b in rows:
            rhos, seen = [], []
            for s in range(cfg.warmup, self.n - cfg.cooldown):
                rhos.append(spearman(self.est_log[s][b], torch.nanmean(oracle[s:, b], dim=0)))
                seen.append(spearman(self.est_log[s][b], torch.nanmean(self.obs_log[s:, b], dim=0)))
            target_w = torch.nanmean(oracle[cfg.warmup:, b], dim=0)
            out["rho_running"].append(nanmean(rhos))
            out["rho_observed"].append(nanmean(seen))
            out["rho_warmup_err"].append(spearman(self.est_log[cfg.warmup][b], target_w))
            out["rho_analysis"].append(spearman(self.analysis_scores[b], target_w))
        return {k: nanmean(v) for k, v in out.items()}


def nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


class VariantSchedule(AdaptiveSchedule):
    """The runtime's AdaptiveSchedule; with a variant, its RegionPeriods gets the variant's
    keyword arguments (built once the analysis exists, as `_due_regions` would build it)."""

    def __init__(self, config, variant: dict):
        super().__init__(config)
        self.variant = variant

    def _analyze(self) -> None:
        super()._analyze()
        if self.variant and self.analysis is not None:
            self.periods = RegionPeriods(self.analysis.grid, self.analysis.block_size, self._budget(),
                                         prior=self.analysis.block_scores.flatten(), **self.variant)


# ------------------------------------------------------------------------------ running
def noise_for(model, seeds) -> torch.Tensor:
    return torch.cat([model.initial_noise(1, torch.Generator().manual_seed(s)) for s in seeds])


class Recorder:
    """The full model, keeping each step's velocity."""

    def __init__(self, model):
        self.model, self.velocities = model, []

    def __call__(self, **kwargs):
        out = self.model.transformer(**kwargs)
        self.velocities.append(out[0].detach().float().clone())
        return out


def run_setting(model, setting: Setting, seeds, references, steps, profile) -> dict:
    classes = [s % model.num_classes for s in seeds]
    emu = Emulator(model, setting, len(seeds), steps, profile)
    images = model.sample(classes, steps, transformer=emu, noise=noise_for(model, seeds), shift=setting.shift)
    p = [psnr(i, r) for i, r in zip(images, references)]
    q = [ssim(i, r) for i, r in zip(images, references)]
    w = emu.work()
    cal = [i for i, s in enumerate(seeds) if s in CAL_SEEDS]
    held = [i for i, s in enumerate(seeds) if s in HELD_OUT_SEEDS]
    pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    low = lambda xs: min(xs) if xs else float("nan")  # noqa: E731
    row = dict(key=setting.key, family=setting.family, estimator=setting.estimator, schedule=setting.label,
               work_option=setting.budget if setting.family == "work" else None,
               anchor=setting.anchor, warmup=setting.warmup,
               cooldown=setting.cooldown, reuse=setting.reuse, order=setting.order, axis=setting.axis,
               shift=setting.shift,
               work=float(w["work"][held].mean()), work_adaptive=float(w["work_adaptive"][held].mean()),
               calls=float(w["calls"][held].mean()), work_cal=float(w["work"][cal].mean()) if cal else None,
               calls_cal=float(w["calls"][cal].mean()) if cal else None,
               psnr_mean=mean(pick(p, held)), psnr_worst=low(pick(p, held)),
               ssim_mean=mean(pick(q, held)), ssim_worst=low(pick(q, held)),
               cal_psnr_mean=mean(pick(p, cal)) if cal else None,
               cal_psnr_worst=low(pick(p, cal)) if cal else None)
    if setting.order > 0:
        if held:
            row.update(emu.spearman_stats(held))
        if cal:
            row.update({f"{k}_cal": v for k, v in emu.spearman_stats(cal).items()})
    return row


LEVEL_PERIODS = ((4, 2, 1), (4, 2, 2), (6, 3, 2), (3, 3, 1), (8, 4, 2))


def main_settings() -> list[Setting]:
    out = [Setting("jano", 7, order) for order in (0, 1, 2)] + [Setting("jano", 3, 1)]
    # held outputs: a few points to compare with forecasting at equal work
    out += [Setting("periods", 7, 0, P) for P in ((4, 2, 1), (4, 2, 2))]
    out += [Setting("uniform", W, 0, (p,)) for W in (7, 3) for p in (2, 3)]
    out += [Setting("staggered", 7, 0, (2,))]
    for W in (7, 3):
        for order in (1, 2):
            out += [Setting("periods", W, order, P) for P in LEVEL_PERIODS]
            out += [Setting(fam, W, order, (p,)) for fam in ("uniform", "staggered") for p in (2, 3, 4)]
        out += [Setting("errrank", W, 1, P, estimator=e) for P in LEVEL_PERIODS for e in ("norm", "raw")]
    out += [Setting("errrank", 3, 2, P) for P in LEVEL_PERIODS]
    # phase: count periods back from the last adaptive step, so that it is computed
    out += [Setting("uniform", W, 1, (p,), anchor="end") for W in (7, 4, 3) for p in (2, 3, 4)]
    out += [Setting("uniform", 4, 1, (2,))]
    out += [Setting("periods", W, 1, P, anchor="end") for W in (7, 3) for P in ((4, 2, 2), (8, 4, 2))]
    # time axis: step index instead of sigma (identical up to rounding at shift 1)
    for order in (1, 2):
        out += [Setting("uniform", 3, order, (p,), axis="step") for p in (2, 3)]
        out += [Setting("periods", 3, order, (4, 2, 2), axis="step")]
    return out + work_settings()


WORKS = (0.35, 0.4, 0.45, 0.5, 0.55)
#: The estimator variant chosen on the calibration seeds (variant_settings), now periods.py's defaults.
CHOSEN: tuple = ()


def work_settings() -> list[Setting]:
    """The runtime's work budget at its default W3 C1, as built (and the chosen variant),
    with uniform aligned periods at the same W/C for comparison at equal token work, and
    the schedule as it runs with the runtime's sign of the sigma horizon (every rate NaN)."""
    out = [Setting("work", 3, 1, budget=w, cooldown=1) for w in WORKS]
    out += [Setting("work", 3, 1, budget=w, cooldown=1, variant=(("signed", True),)) for w in (0.4, 0.5)]
    # two variants from the calibration round (variant_settings): best mean PSNR, best Spearman
    for variant in ((("periods", (1, 2, 3, 6)), ("horizon_power", 0.5), ("alpha", 1.0)),
                    (("periods", (1, 2, 4)), ("horizon_power", 1.0), ("alpha", 1.0))):
        out += [Setting("work", 3, 1, budget=w, cooldown=1, variant=variant) for w in WORKS]
    out += [Setting("uniform", 3, 1, (p,), cooldown=1, anchor=a) for a in ("start", "both") for p in (2, 3, 4)]
    return out


def variant_settings() -> list[Setting]:
    """Estimator variants of periods.RegionPeriods, run on the calibration seeds to choose."""
    out = []
    grid = [(periods, power, alpha) for periods in ((1, 2, 4, 8), (1, 2, 4), (1, 2, 3, 6))
            for power in (0.0, 0.5, 1.0, 2.0) for alpha in (0.5, 1.0)]
    grid += [((1, 2, 4, 8), power, 0.3) for power in (0.5, 1.0)]     # second round: smoother in time
    for periods, power, alpha in grid:
        variant = (("periods", periods), ("horizon_power", power), ("alpha", alpha))
        out += [Setting("work", 3, 1, budget=w, cooldown=1, variant=variant) for w in WORKS]
    return out


def shift_settings() -> list[Setting]:
    """At shift 3 sigma is no longer affine in the step index: does the axis matter?"""
    out = [Setting("uniform", 3, 0, (2,), shift=3.0)]
    for axis in ("sigma", "step"):
        for order in (1, 2):
            out += [Setting("uniform", 3, order, (p,), axis=axis, shift=3.0) for p in (2, 3)]
            out += [Setting("periods", 3, order, (4, 2, 2), axis=axis, shift=3.0)]
    return out


# ------------------------------------------------------------------------------ report
def fmt_row(r: dict, spearman_cols: bool = False) -> str:
    cells = [r["schedule"], f"{r['warmup']}/{r['cooldown']}", r["reuse"], r["axis"],
             f"{r['work']:.0%}", f"{r['work_adaptive']:.0%}", f"{r['calls']:.0%}",
             f"{r['psnr_mean']:.1f} ({r['psnr_worst']:.1f})", f"{r['ssim_mean']:.4f} ({r['ssim_worst']:.4f})"]
    if spearman_cols:
        cells += [f"{r[k]:.2f}" if k in r else "" for k in ("rho_running", "rho_observed", "rho_analysis",
                                                             "rho_running_cal")]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| schedule | W/C | skipped tokens | time axis | token work | work after warm-up | model calls "
          "| PSNR mean (worst) | SSIM mean (worst) |")


def table(rows: list[dict], spearman_cols: bool = False) -> str:
    head = HEADER + (" Spearman: running estimate vs later oracle error | the same vs errors the schedule observed "
                     "| warm-up analysis score vs later oracle error | running estimate vs later oracle error, "
                     "calibration seeds |" if spearman_cols else "")
    sep = "|" + "---|" * head.count(" | ") + "---|"
    return "\n".join([head, sep] + [fmt_row(r, spearman_cols) for r in rows])


def summary_line(r: dict) -> str:
    """One line per row for subset runs: held-out and calibration numbers side by side."""
    f = lambda x, spec: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)  # noqa: E731
    return (f"{r['key']}: held work {f(r['work'], '.1%')} calls {f(r['calls'], '.0%')} "
            f"PSNR {f(r['psnr_mean'], '.2f')} ({f(r['psnr_worst'], '.2f')}) rho {f(r.get('rho_running'), '.2f')} | "
            f"cal work {f(r['work_cal'], '.1%')} calls {f(r.get('calls_cal'), '.0%')} "
            f"PSNR {f(r['cal_psnr_mean'], '.2f')} ({f(r['cal_psnr_worst'], '.2f')}) "
            f"rho {f(r.get('rho_running_cal'), '.2f')}")


def choose(rows: list[dict], max_work: float, key: str, max_calls: float = 1.0) -> Optional[dict]:
    """The row chosen on the calibration seeds: work (calibration) <= max_work, model calls
    <= max_calls, best `key`."""
    ok = [r for r in rows if r["work_cal"] is not None and r["work_cal"] <= max_work + 1e-4 and r["shift"] == 1.0
          and r["calls"] <= max_calls + 1e-4]
    return max(ok, key=lambda r: (r[key], r["cal_psnr_mean"])) if ok else None


def front(rows: list[dict]) -> list[dict]:
    """Held-out Pareto front: no other row with no more work and at least its mean and worst."""
    out = []
    for r in rows:
        if not any(o is not r and o["work"] <= r["work"] + 1e-9 and o["psnr_mean"] >= r["psnr_mean"]
                   and o["psnr_worst"] >= r["psnr_worst"] and
                   (o["work"] < r["work"] - 1e-9 or o["psnr_mean"] > r["psnr_mean"] or o["psnr_worst"] > r["psnr_worst"])
                   for o in rows):
            out.append(r)
    return sorted(out, key=lambda r: r["work"])


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"jano": "tab:red", "periods": "tab:orange", "uniform": "tab:green", "staggered": "tab:olive",
               "errrank": "tab:purple", "work": "tab:blue"}
    markers = {0: "x", 1: "o", 2: "^"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True)
    for ax, key, label in ((axes[0], "psnr_mean", "PSNR mean (dB)"), (axes[1], "psnr_worst", "PSNR worst seed (dB)")):
        for r in rows:
            if r["shift"] != 1.0 or r["axis"] != "sigma":
                continue
            ax.scatter(r["work"], r[key], color=colours[r["family"]], marker=markers[r["order"]], s=22, alpha=0.8,
                       label=f"{r['family']}, {r['reuse']}")
        for name, work, mean, worst in QUOTED:
            ax.scatter(work, mean if key == "psnr_mean" else worst, color="black", marker="*", s=90, label=name)
            ax.annotate(name.split(" (")[0], (work, mean if key == "psnr_mean" else worst), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
        ax.axhline(42 if key == "psnr_mean" else 36, color="grey", ls="--", lw=0.8)
        ax.axhline(35, color="grey", ls=":", lw=0.8) if key == "psnr_mean" else None
        ax.axvline(0.55, color="grey", ls="--", lw=0.8)
        ax.axvline(0.40, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("token work (computed image token-steps / all, warm-up and cool-down included)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=7, loc="lower center", ncol=5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_markdown(path: Path, body: str) -> None:
    """Replace the results block of `path`, keeping any text around it."""
    block = f"{MARK_BEGIN}\n{body}\n{MARK_END}"
    if path.exists():
        text = path.read_text()
        if MARK_BEGIN in text and MARK_END in text:
            text = re.sub(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), lambda _: block, text, flags=re.S)
            path.write_text(text)
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Forecast emulation on the bundled model (issue 9)\n\n" + block + "\n")


def render(rows: list[dict], title: str, seconds: float) -> str:
    main = [r for r in rows if r["shift"] == 1.0]
    parts = [f"_{title}; script wall time {seconds / 60:.1f} min._", ""]
    t1 = choose(main, 0.55, "cal_psnr_worst")
    t2 = choose(main, 0.40, "cal_psnr_mean")
    t3 = choose(main, 0.40, "cal_psnr_mean", max_calls=0.40)
    parts += ["### Chosen on the calibration seeds, reported on the held-out seeds", "",
              "Row 1, target 1: token work <= 55%, best calibration worst-seed PSNR (issue: mean >= 42, "
              "worst >= 36 dB). Row 2, target 2: token work <= 40%, best calibration mean PSNR (issue: mean >= 35 dB). "
              "Row 3, target 2 again with model calls <= 40% too, so that 2x wall clock does not depend on partial "
              "steps being proportionally cheaper.", "",
              table([r for r in (t1, t2, t3) if r]), ""]
    parts += ["### Held-out Pareto front (work vs mean and worst PSNR; time axis sigma, shift 1)", "",
              table(front([r for r in main if r["axis"] == "sigma"])), ""]
    families = [("jano", "Jano reference schedule"), ("periods", "Per-level periods, levels from the warm-up analysis"),
                ("uniform", "Uniform period, aligned (whole-step skips; exact, no stale K/V)"),
                ("staggered", "Uniform period, staggered by block stripes (upper bound: K/V fresh)"),
                ("errrank", "Per-level periods, levels re-ranked every step by measured forecast error"),
                ("work", "The runtime's work budget (JanoConfig.work; adaptive.py + periods.py, errors read after "
                         "full steps)")]
    for fam, heading in families:
        sub = [r for r in main if r["family"] == fam and r["axis"] == "sigma"]
        parts += [f"### {heading}", "", table(sub, spearman_cols=fam in ("errrank", "work", "periods")), ""]
    steps_axis = [r for r in main if r["axis"] == "step"]
    twins = [r2 for r in steps_axis for r2 in main
             if r2["axis"] == "sigma" and r2["key"] == r["key"].replace("| step |", "| sigma |")]
    parts += ["### Time axis at shift 1: step index vs sigma (sigma is affine in the step index here)", "",
              table(sorted(steps_axis + twins, key=lambda r: (r["schedule"], r["reuse"], r["axis"]))), ""]
    shifted = [r for r in rows if r["shift"] != 1.0]
    parts += ["### Time axis at shift 3 (sigma not affine in the step; own full-model references)", "",
              table(sorted(shifted, key=lambda r: (r["schedule"], r["reuse"], r["axis"]))), ""]
    parts += ["### Prediction (held-out seeds, mean over the forecasting rows of each family)", "",
              f"Target: per block, the error of an order-k forecast over points {ORACLE_HORIZON} steps apart, "
              "from the full-model velocities along the row's own trajectory, averaged over steps >= s "
              "(schedule independent). Estimate: the block's EMA of observed errors in force at step s "
              "(built from steps < s). Spearman over the 64 blocks, mean over s in the adaptive phase, then seeds.", "",
              "| family | estimator | rows | running estimate vs later oracle error | estimate frozen at end of warm-up "
              "| warm-up analysis score | running estimate vs errors the schedule observed |",
              "|---|---|---|---|---|---|---|"]
    for fam in ("uniform", "staggered", "periods", "errrank", "work"):
        for est in ("norm", "raw"):
            rho = [r for r in main if r["family"] == fam and "rho_running" in r and r["axis"] == "sigma"
                   and r.get("estimator", "norm") == est]
            if rho:
                m = lambda k: statistics.fmean(r[k] for r in rho)  # noqa: E731
                parts.append(f"| {fam} | {est} | {len(rho)} | {m('rho_running'):.2f} "
                             f"({min(r['rho_running'] for r in rho):.2f} .. {max(r['rho_running'] for r in rho):.2f}) "
                             f"| {m('rho_warmup_err'):.2f} | {m('rho_analysis'):.2f} | {m('rho_observed'):.2f} |")
    parts.append("")
    return "\n".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/forecast_emulation.md")
    p.add_argument("--plot", default="docs/forecast_emulation.png")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="a few settings only (smoke test)")
    p.add_argument("--only", choices=("all", "work", "variants"), default="all",
                   help="work: the work-budget rows and their uniform comparisons; variants: the estimator "
                        "variants (for the calibration seeds) with the built schedule and uniform rows")
    p.add_argument("--seeds", choices=("all", "cal", "held"), default="all",
                   help="run only the calibration or the held-out seeds (the tables need both)")
    p.add_argument("--replot", default=None, metavar="JSON", help="only rewrite the tables and plot from a --json file")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="with --replot: rows of this --json file (say of --only work) replace the rows with the same "
                        "key, and rows of families no longer run (budget) are dropped")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: this tiny model at batch 12 runs about as fast on one "
                        "thread, and 2 threads on a shared 2-core machine ran 10x slower)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        if args.merge:
            extra = json.loads(Path(args.merge).read_text())
            keys = {r["key"] for r in extra["rows"]}
            saved["rows"] = [r for r in saved["rows"] if r["key"] not in keys and r["family"] != "budget"] + extra["rows"]
            saved["title"] += f"; rows of `--only work` merged in ({extra['seconds'] / 60:.1f} min)"
        write_markdown(Path(args.out), render(saved["rows"], saved["title"], saved["seconds"]))
        plot(saved["rows"], Path(args.plot), saved["title"])
        return
    start = time.perf_counter()
    self_test()
    torch.manual_seed(0)
    model = bundled()
    seeds = {"all": list(CAL_SEEDS) + list(HELD_OUT_SEEDS), "cal": list(CAL_SEEDS),
             "held": list(HELD_OUT_SEEDS)}[args.seeds]
    classes = [s % model.num_classes for s in seeds]
    settings = {"all": main_settings() + shift_settings(), "work": work_settings(),
                "variants": [s for s in work_settings() if s.family == "uniform" or not s.variant]
                + variant_settings()}[args.only]
    if args.quick:
        settings = [Setting("uniform", 3, 1, (2,)), Setting("errrank", 3, 1, (4, 2, 2)),
                    Setting("errrank", 3, 1, (4, 2, 2), estimator="raw"), Setting("work", 3, 1, budget=0.4, cooldown=1)]
    rows = []
    with torch.no_grad():
        references, profiles = {}, {}
        cal = [i for i, s in enumerate(seeds) if s in CAL_SEEDS] or list(range(len(seeds)))
        for shift in sorted({s.shift for s in settings} | {1.0}):
            recorder = Recorder(model)
            references[shift] = model.sample(classes, STEPS, noise=noise_for(model, seeds), shift=shift,
                                             transformer=recorder)
            profiles[shift] = horizon_profile(torch.stack(recorder.velocities)[:, cal])
            print(f"shift {shift:g}: forecast error at horizon 1..8 relative to 1, orders 0/1/2 (calibration seeds):")
            for k in range(3):
                print("   ", " ".join(f"{float(x):.2f}" for x in profiles[shift][k, 1:9]))
        # sanity: batched reference equals a batch-1 run; the emulator with every token computed is exact
        single = model.sample([classes[-1]], STEPS, torch.Generator().manual_seed(seeds[-1]))[0]
        batch_db = psnr(single, references[1.0][-1])
        oracle = run_setting(model, Setting("uniform", STEPS, 0, (1,), cooldown=0), seeds, references[1.0], STEPS,
                             profiles[1.0])
        assert all(x > 100 for x in (oracle["psnr_worst"], oracle["cal_psnr_worst"])
                   if x is not None and not math.isnan(x)), oracle
        for setting in tqdm(settings, desc="schedules"):
            rows.append(run_setting(model, setting, seeds, references[setting.shift], STEPS, profiles[setting.shift]))
            print(summary_line(rows[-1]), flush=True)
    seconds = time.perf_counter() - start
    if args.only != "all" or args.seeds != "all":
        if args.json:
            Path(args.json).write_text(json.dumps(dict(seconds=seconds, rows=rows), indent=1))
        print(f"\n{len(rows)} settings in {seconds / 60:.1f} min (subset: no tables written)")
        return
    title = (f"bundled model, {STEPS} Euler steps, held-out seeds {HELD_OUT_SEEDS[0]}..{HELD_OUT_SEEDS[-1]}, "
             f"calibration seeds {CAL_SEEDS[0]}..{CAL_SEEDS[-1]}, torch {torch.__version__}, "
             f"batched reference vs batch-1 run {'> 100' if batch_db > 100 else f'{batch_db:.1f}'} dB")
    body = render(rows, title, seconds)
    print(body)
    if args.out:
        write_markdown(Path(args.out), body)
    if args.plot:
        plot(rows, Path(args.plot), title)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(title=title, seconds=seconds, rows=rows), indent=1))
    print(f"\n{len(rows)} settings in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
