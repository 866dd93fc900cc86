"""signature: the calling convention of a rewritten graph, declared by the passes that add
inputs and write states, read by lowering and runtime (and by nothing else).

A rewritten graph takes the user's inputs, then the index (and the step time, where a
pass forecasts), then every state tensor, and returns the user's outputs only: the graph
writes its states in place (`write_state`: an `aten.index_copy_` of the computed rows), so
a state keeps its storage for as long as the runtime owns it (no copy per step, stable
addresses for CUDA graphs):

    inputs : x_0 .. x_{u-1}  active_index [n] int64  [step_time [] fp32]  state_0 .. state_{s-1}
    outputs: y_0 .. y_{v-1}
             (FLUX, 2 blocks: state = out_cache [B, N, C], k_cache_0 [B, H, T+N, D], v_cache_0, ...)

A pass declares what it adds (`declare_index`, `declare_state`, `write_state`);
`graph_signature(gm)` reads the declarations back, checks their order, and describes each
state once (role, layer, token axis, shape, real dtype, device). New per-token state (a
forecast history) is one more `declare_state` call and its writes.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.fx as fx

from .nodes import output_node, placeholders

ROLE = "jano_role"              # node.meta key: the Role of a placeholder a pass added
STATE = "jano_state"            # node.meta key: (layer, token_dim, reset_value) of a state
STATE_WRITE = "jano_state_write"      # node meta: the name of the state an in-place write updates
EXIT_SCATTER = "jano_exit_scatter"     # node meta: the index_copy that writes computed tokens
                                       # into the full exit tensor
ENTRY_GATHER = "jano_entry_gather"     # node meta: the index_select of the computed tokens
                                       # at the entry
TABLE_GATHER = "jano_table_gather"     # node meta: the index_select of a position table's rows
                                       # for the computed tokens (token_shapes.py)


class Role(str, enum.Enum):
    """What an added graph input is."""
    ACTIVE_INDEX = "active_index"   #: [n] int64 positions among the N image tokens
    STEP_TIME = "step_time"         #: [] fp32 time of this step (forecasts read it)
    OUT_CACHE = "out_cache"         #: the exit tensor of every image token [B, N, C]
    K_CACHE = "k_cache"             #: keys of one self-attention layer, full sequence
    V_CACHE = "v_cache"             #: values of one self-attention layer, full sequence
    TOKEN_CACHE = "token_cache"     #: one operand of a token-mixing op (linear attention's key
                                    #: features or values, a convolution's input grid), every token
    HISTORY = "history"             #: fp32 exit tensor [B, N, C] as computed j calls back
    HISTORY_TIME = "history_time"   #: fp32 [N] the step time of each token's history slot j
    FORECAST_ERROR = "forecast_error"   #: fp32 [N] how far each token's forecast was off when
                                        #: it was last computed, per unit of time
    KV_PREV = "kv_prev"             #: a K/V cache's rows as computed one computation before
    KV_TIME = "kv_time"             #: fp32 [R] the step time of each K/V row's slot j (0, 1)


# states that complete the gathered rows of a tensor to the full sequence: a full step
# writes every row, a partial step the computed ones
COMPLETION_ROLES = frozenset({Role.K_CACHE, Role.V_CACHE, Role.TOKEN_CACHE, Role.KV_PREV, Role.KV_TIME})


class SignatureError(Exception):
    """The declarations in a rewritten graph do not form a valid signature (a pass bug)."""


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a rewritten graph: an input the graph writes in place."""
    name: str
    role: Role
    layer: Optional[int]            # self-attention layer of a K/V cache, number of a token
                                    # cache (one per operand a mixing op reads whole); None otherwise
    token_dim: int                  # the axis that runs over the (full) token sequence
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    reset_value: Optional[float] = None   # filled with this when allocated and when a new
                                          # generation starts (NaN: "never computed")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    def allocate(self) -> torch.Tensor:
        """A new tensor of this state: `reset_value` where set, else zeros (a cache is never
        read before a full step has written it). A normal tensor even under
        `torch.inference_mode()`: a later call outside it writes the state in place, which
        an inference tensor refuses."""
        fill = 0.0 if self.reset_value is None else self.reset_value
        with torch.inference_mode(False):
            return torch.full(self.shape, fill, dtype=self.dtype, device=self.device)

    def describe(self) -> dict:
        """JSON-friendly description, for reports."""
        return {"name": self.name, "role": self.role.value, "layer": self.layer,
                "token_dim": self.token_dim, "shape": list(self.shape),
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "reset_value": self.reset_value, "bytes": self.nbytes}


@dataclass(frozen=True)
class GraphSignature:
    """The extra inputs and outputs of a rewritten graph (see the module docstring)."""
    num_user_inputs: int
    num_user_outputs: int
    num_image_tokens: int           # N: active_index holds 0 .. N positions
    index_device: torch.device
    states: tuple[StateSpec, ...]
    takes_time: bool = False        # a step_time input follows the index

    @property
    def index_position(self) -> int:
        """Position of `active_index` among the graph's inputs."""
        return self.num_user_inputs

    @property
    def state_bytes(self) -> int:
        return sum(s.nbytes for s in self.states)

    def call_args(self, user_args: Sequence, index: torch.Tensor, states: Sequence,
                  step_time: Optional[torch.Tensor] = None) -> list:
        """The argument list of one call: user inputs, index, [step time], states."""
        if len(user_args) != self.num_user_inputs or len(states) != len(self.states):
            raise ValueError(f"a rewritten graph takes {self.num_user_inputs} inputs and "
                             f"{len(self.states)} states, got {len(user_args)} and {len(states)}")
        if (step_time is not None) != self.takes_time:
            raise ValueError("step_time is given exactly when the graph takes it "
                             f"(takes_time={self.takes_time})")
        time = (step_time,) if self.takes_time else ()
        return [*user_args, index, *time, *states]


# ----------------------------------------------------------------------------- finding
def declared_input(graph: fx.Graph, role: Role) -> Optional[fx.Node]:
    """The first added input with `role` (the index, the step time, the output cache)."""
    return next((n for n in placeholders(graph) if n.meta.get(ROLE) is role), None)


# ----------------------------------------------------------------------------- declaring
def _add_placeholder(graph: fx.Graph, name: str, role: Role, example: torch.Tensor) -> fx.Node:
    with graph.inserting_after(placeholders(graph)[-1]):
        node = graph.placeholder(name)
    node.meta[ROLE] = role
    node.meta["example_value"] = example
    return node


def declare_index(graph: fx.Graph, device: torch.device) -> fx.Node:
    """Add the `active_index` input ([n] int64 on `device`); it must precede every state."""
    if any(ROLE in n.meta for n in placeholders(graph)):
        raise SignatureError("active_index must be declared before any state")
    return _add_placeholder(graph, Role.ACTIVE_INDEX.value, Role.ACTIVE_INDEX,
                            torch.empty(0, dtype=torch.long, device=device))


def declare_step_time(graph: fx.Graph, device: torch.device) -> fx.Node:
    """Add the `step_time` input ([] fp32), right after `active_index`."""
    with graph.inserting_after(declared_input(graph, Role.ACTIVE_INDEX)):
        node = graph.placeholder(Role.STEP_TIME.value)
    node.meta[ROLE] = Role.STEP_TIME
    node.meta["example_value"] = torch.empty((), dtype=torch.float32, device=device)
    return node


def declare_state(graph: fx.Graph, name: str, role: Role, example: torch.Tensor,
                  token_dim: int, layer: Optional[int] = None,
                  reset_value: Optional[float] = None) -> fx.Node:
    """Add a state input shaped like `example` (a fake tensor of the full sequence)."""
    node = _add_placeholder(graph, name, role, example)
    node.meta[STATE] = (layer, token_dim, reset_value)
    return node


def write_state(graph: fx.Graph, state: fx.Node, dim: int, rows, value: fx.Node) -> fx.Node:
    """Write `value` into the rows `rows` of `state` along `dim`, in place (insert it under
    a `graph.inserting_*` context). The node returns the written state; readers of the new
    content must use it (that orders them after the write). An aten op with a mutable
    schema: dead-code elimination keeps it."""
    node = graph.call_function(torch.ops.aten.index_copy_.default, (state, dim, rows, value))
    node.meta[STATE_WRITE] = state.name
    return node


def state_writes(graph: fx.Graph, name: Optional[str] = None) -> list[fx.Node]:
    """The in-place writes of every state (or of the state called `name`), in graph order."""
    return [n for n in graph.nodes if STATE_WRITE in n.meta and name in (None, n.meta[STATE_WRITE])]


def retire_state(graph: fx.Graph, state: fx.Node) -> None:
    """Remove a state a later pass made redundant: its writes, then its input (which must
    be unused by then)."""
    for write in state_writes(graph, state.name):
        if write.users:
            raise SignatureError(f"the write {write.name} of {state.name} is still read by {list(write.users)}")
        graph.erase_node(write)
    if state.users:
        raise SignatureError(f"state {state.name} is still read by {list(state.users)}")
    graph.erase_node(state)


# ----------------------------------------------------------------------------- reading
def graph_signature(gm: fx.GraphModule) -> GraphSignature:
    """Read the declarations of a rewritten graph; raise SignatureError where they disagree
    (added inputs not at the end, index not first, a write to something not a state)."""
    inputs = placeholders(gm.graph)
    added = [n for n in inputs if ROLE in n.meta]
    num_user_inputs = len(inputs) - len(added)
    if inputs[num_user_inputs:] != added:
        raise SignatureError("the added inputs are not after every user input")
    if not added or added[0].meta[ROLE] is not Role.ACTIVE_INDEX:
        raise SignatureError("the first added input is not active_index")
    takes_time = len(added) > 1 and added[1].meta[ROLE] is Role.STEP_TIME
    index, state_nodes = added[0], added[1 + takes_time:]
    if any(n.meta[ROLE] in (Role.ACTIVE_INDEX, Role.STEP_TIME) for n in state_nodes):
        raise SignatureError("an index or step time among the states")
    names = {n.name for n in state_nodes}
    strays = [w.name for w in state_writes(gm.graph)
              if w.meta[STATE_WRITE] not in names or w.args[0].name not in names]
    if strays:
        raise SignatureError(f"in-place writes to something other than a state: {strays}")
    results = output_node(gm.graph).args[0]
    num_outputs = len(results) if isinstance(results, (tuple, list)) else 1
    num_image_tokens = None
    states = []
    for node in state_nodes:
        ex = node.meta["example_value"]
        layer, token_dim, reset_value = node.meta[STATE]
        states.append(StateSpec(node.name, node.meta[ROLE], layer, token_dim, tuple(int(s) for s in ex.shape),
                                ex.dtype, ex.device, reset_value=reset_value))
        if node.meta[ROLE] in (Role.OUT_CACHE, Role.HISTORY):
            num_image_tokens = int(ex.shape[token_dim])
    if num_image_tokens is None:
        raise SignatureError("no out_cache or history state: the number of image tokens is unknown")
    return GraphSignature(num_user_inputs, num_outputs, num_image_tokens,
                          index.meta["example_value"].device, tuple(states), takes_time)
