"""One rewritten graph, ready to run: user inputs + an index (+ the step time) + a branch's
states in, user outputs out, the states written in place. The calling convention comes
from the graph's signature.

Which lowered variant a step runs:

    step                       symbolic (the default)           static shapes (`static_shapes=True`)
    full                       rewritten graph, index 0..N-1    `full` variant: every token at the
                                                                static length N, no gather; it
                                                                fills the caches (dense_variant.py)
    partial, n tokens          rewritten graph, symbolic n;     one graph per exact n (the automatic
                               under static calls captured      schedule's region sets, the sets a
                               once per length: exact n, or     user keeps: manual_policy.py) or per
                               other sets padded to a bucket    bucket (other sets, padded by repeating
                                                                an active index to a multiple of
                                                                N / `static_buckets`); at most
                                                                MAX_STATIC_GRAPHS, then symbolic
    no token due               skip tail                        skip tail

The symbolic graph serves every step by default, on a GPU too: one compile per rewritten
graph. On an H200 (torch 2.11, FLUX.1-dev width at 5 + 10 blocks, bf16, 2026-11-27) it ran
a full step at least as fast as the `full` variant in both modes, the settings taking turns
call by call (per call / back to back, against plain Inductor: default mode 1.02x / 0.99x
against 1.04x / 1.05x; reduce-overhead 1.03x / 0.98x against 1.04x / 1.04x), and its
partial steps (30% / 10%) came within 1.10-1.11x of their bound per call and 1.05x back to
back uncaptured. (An earlier H200 run, when every size of the rewritten graph was lowered
symbolic, put one symbolic cat/GELU kernel at 3x its static time; only the index length is
symbolic now.) Under static calls a full step shares the capture of a partial step of all N
tokens. Full steps fill the caches even when no later step reads them: the `full` variant
writes K and V once, straight into the caches its attention then reads.

With `static_calls` every call runs through a `StaticCall` (static_call.py): on CUDA one
captured CUDA graph per (variant, length, branch), replayed each step. Captured per length
the symbolic graph ran at least as fast as the per-length static graphs (H200, 5 + 10
blocks, 30% active: 15.5 ms at 1229 tokens against 16.6 ms for the static graph padded to
1280, whose 51 padding rows an H100 profile put at ~0.5 ms; a 50-step generation with the
schedule's exact sets: 1.58x plain). Sets other than the schedule's regions and the first
two lengths a user sets (manual_policy.py: a kept set runs unpadded) are padded to buckets
there, so that a policy whose set changes size every step captures a bounded number of
lengths rather than one per step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.fx as fx

from jano_compile.passes.signature import GraphSignature

from .cache_store import BranchState
from .lowering import LoweredRewrite
from .options import STATIC_BUCKETS, Options
from .static_call import StaticCall

log = logging.getLogger(__name__)

MAX_DEVICE_INDICES = 8     # device copies of CPU index tensors kept (medium, active, ...)
MAX_STATIC_GRAPHS = 8      # exact-length or bucket graphs per rewritten graph
MAX_RECAPTURES = 4         # static calls whose inputs moved more often: the runner stops using them
MAX_STATIC_CALLS = 64      # (variant, length, branch) captures; other lengths then run uncaptured


def bucket_length(n: int, num_tokens: int, buckets: int) -> int:
    """The smallest multiple of ceil(N / buckets) that holds n tokens (at most N)."""
    step = -(-num_tokens // buckets)
    return min(num_tokens, -(-n // step) * step)


def padded_index(index: torch.Tensor, length: int) -> torch.Tensor:
    """`index` [n] (n >= 1) extended to [length] by repeating its last position: the padded
    rows compute that active token again, identically, and write the same value twice."""
    if length == index.numel():
        return index
    return torch.cat([index, index[-1:].expand(length - index.numel())])


@dataclass(frozen=True)
class RunMode:
    """How a runner lowers and calls its graphs."""
    static_shapes: bool     # one graph per index length, and the `full` variant for full steps
    static_calls: bool      # through StaticCall buffers (CUDA graphs when `capture`)
    capture: bool

    @property
    def pads(self) -> bool:
        """Index sets other than the schedule's regions are padded to a bucket length."""
        return self.static_shapes or self.static_calls

    @staticmethod
    def resolve(options: Options, device: torch.device) -> "RunMode":
        cuda = device.type == "cuda"
        calls = (cuda and options.mode in ("reduce-overhead", "max-autotune")
                 if options.cuda_graphs is None else options.cuda_graphs)
        return RunMode(static_shapes=bool(options.static_shapes), static_calls=calls,
                       capture=calls and cuda)


class GraphRunner:
    """Runs the lowered variants of a rewritten graph; keeps the index and the step time
    on its device. `static_positions`: the user inputs whose storage never changes between
    calls (the parameters)."""

    def __init__(self, signature: GraphSignature, options: Options, rewritten: fx.GraphModule,
                 tail: Optional[fx.GraphModule] = None,
                 full_variant: Optional[Callable[[], Optional[fx.GraphModule]]] = None,
                 static_positions: frozenset = frozenset()):
        self.signature = signature
        self.options = options
        self.mode = RunMode.resolve(options, signature.index_device)
        if options.static_buckets is not None and not self.mode.pads:
            log.warning("jano: static_buckets=%d has no effect: partial steps run one symbolic graph "
                        "for every length here (static shapes and CUDA graphs are off); index sets are padded "
                        "to buckets under static_shapes=True or CUDA graphs (mode=\"reduce-overhead\" on a "
                        "GPU)", options.static_buckets)
        n = signature.num_image_tokens
        self._rewritten = rewritten
        self.lowered = LoweredRewrite(rewritten, options, signature)
        self.tail = LoweredRewrite(tail, options, signature, n) if tail is not None else None
        # the full-step variant (built now, before any lowering touches the rewritten graph)
        variant = full_variant() if full_variant is not None and self.mode.static_shapes else None
        self.full = LoweredRewrite(variant, options, signature, n) if variant is not None else None
        self.static: dict[int, LoweredRewrite] = {}      # index length -> static partial graph
        self._full_index: Optional[torch.Tensor] = None
        self._on_device: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._step_time: Optional[torch.Tensor] = None
        self._static_positions = self._static_argument_positions(static_positions)
        self._calls: dict[tuple, StaticCall] = {}
        self._recaptures = 0
        self._pool = None
        self.static_calls_off: Optional[str] = None      # why static calls stopped, if they did

    # ------------------------------------------------------------------ reporting
    def _variants(self):
        return [v for v in (self.lowered, self.tail, self.full, *self.static.values()) if v is not None]

    @property
    def compiles(self) -> int:
        return sum(v.compiles for v in self._variants())

    @property
    def compile_seconds(self) -> float:
        return sum(v.compile_seconds for v in self._variants())

    @property
    def captures(self) -> int:
        return sum(c.captured for c in self._calls.values())

    @property
    def capture_failures(self) -> list[str]:
        """Why captures failed (those calls run uncaptured), and why static calls stopped."""
        failures = [c.failure for c in self._calls.values() if c.failure]
        return failures + ([self.static_calls_off] if self.static_calls_off else [])

    def release_calls(self, state: Optional[BranchState] = None) -> None:
        """Drop the static calls (their buffers, CUDA graphs and the references they hold to
        the states) of one branch's `state`, or all of them, so that the caches' memory can
        go back."""
        if state is not None:
            for key in [k for k in self._calls if k[2] == id(state)]:
                del self._calls[key]
            return
        self._calls.clear()
        self._pool = None

    # ------------------------------------------------------------------ inputs
    def _static_argument_positions(self, user_static: frozenset) -> frozenset:
        """Positions in `call_args` that keep their storage: the parameters, the step-time
        buffer and the states (the index and the activations are copied)."""
        sig = self.signature
        first_state = sig.index_position + 1 + sig.takes_time
        time = {sig.index_position + 1} if sig.takes_time else set()
        return frozenset(user_static) | time | set(range(first_state, first_state + len(sig.states)))

    def device_index(self, index: Optional[torch.Tensor], length: Optional[int] = None) -> torch.Tensor:
        """[length] int64 on the graph's device: `index` (padded to `length`) copied once,
        or every token for None."""
        device = self.signature.index_device
        if index is None:
            if self._full_index is None:
                self._full_index = torch.arange(self.signature.num_image_tokens, device=device)
            return self._full_index
        length = index.numel() if length is None else length
        key = (id(index), length)
        cached = self._on_device.get(key)
        if cached is None or cached[0] is not index:
            if len(self._on_device) >= MAX_DEVICE_INDICES:
                self._on_device.clear()
            cached = (index, padded_index(index, length).to(device))
            self._on_device[key] = cached
        return cached[1]

    def _time(self, step_time: float) -> Optional[torch.Tensor]:
        """The step time as a [] fp32 tensor on the device (filled in place: no new buffer)."""
        if not self.signature.takes_time:
            return None
        if self._step_time is None:
            with torch.inference_mode(False):    # filled in place by calls in and out of inference mode
                self._step_time = torch.zeros((), dtype=torch.float32, device=self.signature.index_device)
        return self._step_time.fill_(step_time)

    # ------------------------------------------------------------------ calls
    def _run(self, name, lowered: LoweredRewrite, args, index: torch.Tensor, state: BranchState,
             step_time: float) -> tuple:
        call_args = self.signature.call_args(args, index, state.tensors, self._time(step_time))
        if not self.mode.static_calls or self.static_calls_off or index.numel() == 0:
            return tuple(lowered(*call_args))
        key = (name, index.numel(), id(state))
        call = self._calls.get(key)
        if call is not None and not call.matches(call_args):
            self._recaptures += 1
            if self._recaptures > MAX_RECAPTURES:
                self.static_calls_off = (f"inputs moved {self._recaptures} times (new addresses or "
                                         "shapes): static calls stopped")
                log.warning("jano: %s", self.static_calls_off)
                return tuple(lowered(*call_args))
            call = None
        if call is None:
            if len(self._calls) >= MAX_STATIC_CALLS:   # the symbolic graph under ever new lengths
                return tuple(lowered(*call_args))
            if self.mode.capture and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            call = StaticCall(lowered, call_args, self._static_positions, self.mode.capture, self._pool)
            self._calls[key] = call
        return call(call_args)

    def _partial_graph(self, n: int, exact: bool) -> tuple[LoweredRewrite, int]:
        """(lowered graph, index length) for a partial step of n tokens."""
        if not self.mode.pads or n == 0:
            return self.lowered, n
        length = n if exact else bucket_length(n, self.signature.num_image_tokens,
                                               self.options.static_buckets or STATIC_BUCKETS)
        if not self.mode.static_shapes:     # the symbolic graph, one static call per length
            return self.lowered, length
        graph = self.static.get(length)
        if graph is None and len(self.static) < MAX_STATIC_GRAPHS:
            graph = self.static[length] = LoweredRewrite(self._rewritten, self.options, self.signature, length)
        if graph is None:   # the bound is reached: the smallest larger static graph, else symbolic
            larger = [m for m in self.static if m >= n]
            if not larger:
                return self.lowered, n
            length = min(larger)
            graph = self.static[length]
        return graph, length

    def partial_step(self, args, index: torch.Tensor, state: BranchState, step_time: float,
                     exact: bool = False) -> tuple:
        """Recompute the image tokens at `index` (sorted int64 [n], CPU or device): the
        other tokens keep (or forecast) their outputs and K/V. `exact`: `index` is one of a
        few fixed sets (the schedule's regions, a set the user keeps), worth a graph of its
        own length."""
        graph, length = self._partial_graph(index.numel(), exact)
        outputs = self._run(("partial", length), graph, args, self.device_index(index, length),
                            state, step_time)
        state.ran(full=False)
        return outputs

    def full_step(self, args, state: BranchState, step_time: float) -> tuple:
        """Compute every image token and fill the caches: the `full` variant under static
        shapes, else the rewritten graph at every token (a partial step of all N, sharing its
        static call)."""
        if self.full is not None:
            name, graph = "full", self.full
        else:
            name, graph = ("partial", self.signature.num_image_tokens), self.lowered
        outputs = self._run(name, graph, args, self.device_index(None), state, step_time)
        state.ran(full=True)
        return outputs

    def skip(self, args, state: BranchState, step_time: float) -> tuple:
        """A step that computes no image token: the tail's outputs; the states stay."""
        return self._run("tail", self.tail, args, self.device_index(None), state, step_time)
