"""token_propagation: label every token axis of a graph, op by op, from the entry forward.

`Propagation(gm, entry, exit).run()` walks the graph in order; every op that reads a
labelled tensor is handed to its token rule (passes/token_rules: keyed by op, as data),
which returns the label of its result and records in the plan what the rewrite changes.
Labels: TokenAxis (tokens on one axis, in a layout of text and image segments), TokenGrid
(on their latent grid), FrameGroups / FrameRows (split into frames), a tuple of these (an
op with several results), or None (no image token). Any op no rule proves token-wise raises
`Unrewritable` naming the op and why, with how far the walk got (`progress`: the analysis
tries several entry candidates and reports the one that got furthest).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from . import token_grid
from .nodes import op_name, value
from .plan import SELF, FrameGroups, FrameRows, Layout, TokenAxis, TokenGrid, TokenPlan, Unrewritable
from .token_rules import (FRAME_RULES, FRAME_TARGET_RULES, GRID_RULES, GRID_TARGET_RULES, KEYWORD_CALLS, RULES,
                          TARGET_RULES)
from .token_rules.grid import operand_grid
from .token_rules.op_names import DATA_FIRST_ONLY


class Propagation:
    """Labels token axes from `entry` forward; the rules record literals, tables and attention."""

    def __init__(self, gm: fx.GraphModule, entry: fx.Node, exit_node: fx.Node, entry_dim: int = 1,
                 folded: TokenGrid = None):
        self.gm = gm
        n_img = folded.layout.full_length if folded is not None else value(exit_node).shape[1]
        self.plan = TokenPlan(num_image_tokens=n_img, entry=entry, exit=exit_node, entry_dim=entry_dim,
                              folded=folded)
        self.axes: dict = {}
        self.visited = 0

    # -- what the rules read: labels and recorded tensors of operands; failure
    def ax(self, a) -> Any:
        return self.axes.get(a) if isinstance(a, fx.Node) else None

    def fail(self, node: fx.Node, why: str):
        # progress: how far this entry candidate got
        raise Unrewritable(f"{node.name} ({op_name(node)}): {why}", progress=self.visited)

    def tensor(self, node: fx.Node, a) -> torch.Tensor:
        """The example tensor dynamo recorded for `a` (an operand of `node`, or `node` itself);
        fails when there is none: every shape rule reads it."""
        v = value(a)
        if isinstance(v, torch.Tensor):
            return v
        what = "its result" if a is node else f"operand {getattr(a, 'name', repr(a))}"
        found = "no recorded shape" if v is None else f"a recorded {type(v).__name__}, not a tensor"
        self.fail(node, f"{what} has {found}")

    def ndim(self, node: fx.Node, a) -> int:
        return self.tensor(node, a).dim()

    def token_axis(self, node: fx.Node, a) -> TokenAxis:
        """The token axis of `a`, the tensor operand `node` reads; fails when image tokens
        reach `node` otherwise (through another argument, or as a tuple of tensors)."""
        t = self.ax(a)
        if isinstance(t, TokenAxis):
            return t
        if t is None:
            self.stray_tokens(node, "the tensor it works on")
        self.fail(node, f"{a.name}, a tuple of token-carrying tensors, is used as one tensor")

    def stray_tokens(self, node: fx.Node, expected: str):
        carriers = ", ".join(x.name for x in node.all_input_nodes if self.ax(x) is not None)
        self.fail(node, f"image tokens reach this op through {carriers}, not through {expected}")

    def run(self) -> TokenPlan:
        plan = self.plan
        started = False
        for node in self.gm.graph.nodes:
            if node is plan.entry:
                self.axes[node] = plan.folded or TokenAxis(plan.entry_dim, Layout.image(plan.num_image_tokens))
                started = True
                if node is plan.exit:
                    break
                continue
            if not started or node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                for a in node.all_input_nodes:
                    if self.ax(a) is not None:
                        self.fail(node, f"image tokens of {a.name} reach the output without "
                                  "passing the exit")
                continue
            inputs = [a for a in node.all_input_nodes if self.ax(a) is not None]
            if not inputs:
                continue
            self.axes[node] = self.visit(node)
            self.visited += 1
            if node is plan.exit:
                got = self.axes[node]
                if plan.folded is not None:
                    if not (isinstance(got, TokenGrid) and got.dims[:2] == plan.folded.dims[:2]
                            and not token_grid.holds_grid(got.dims[2])):
                        self.fail(node, f"the exit does not hold the image tokens as the entry does, "
                                  f"folded {plan.folded.dims[:2]} (found {got})")
                elif not (isinstance(got, TokenAxis) and got.dim == 1 and got.layout.is_image_only):
                    self.fail(node, f"the exit does not hold image tokens on axis 1 (found {got})")
                self.axes[node] = None  # downstream uses the scattered full tensor
        else:
            if not started:
                raise Unrewritable("the entry was not reached")
        if plan.exit not in self.axes:
            # progress 0: an entry inside a block whose tokens end in a sum over them (a
            # linear attention's values) reaches no exit; an earlier candidate says why
            raise Unrewritable(f"the image tokens of the entry {plan.entry.name} do not reach the exit "
                               f"{plan.exit.name}", progress=0)
        if not any(site.kind == SELF for site in plan.attention) and not plan.mixing:
            # progress 0: a later candidate that skips the blocks is no entry
            raise Unrewritable(f"no self-attention over image tokens between the entry "
                               f"{plan.entry.name} and the exit {plan.exit.name}", progress=0)
        plan.axes = {k: v for k, v in self.axes.items() if v is not None}
        plan.axes[plan.exit] = TokenAxis(1, Layout.image(plan.num_image_tokens)) if plan.folded is None else got
        return plan

    # -- dispatch: the rule for the op, by call target first, then by op name
    def visit(self, node: fx.Node):
        name = op_name(node)
        labels = [self.ax(a) for a in node.all_input_nodes]
        if any(isinstance(t, (FrameGroups, FrameRows)) for t in labels):
            return self.in_frames(node, name)
        if any(isinstance(t, TokenGrid) for t in labels):
            return self.on_grid(node, name)
        rule = TARGET_RULES.get(node.target)
        if rule is None:
            if not node.args and name not in KEYWORD_CALLS:
                self.fail(node, "called with keyword arguments only (the tensor it works on is "
                          "expected as the first positional argument)")
            rule = RULES.get(name)
        if rule is None:
            self.fail(node, "this op on image tokens is not known to be token-wise")
        return rule(self, node, name)

    def in_frames(self, node: fx.Node, name: str):
        """The rule for an op on image tokens split into frames (token_rules.frames): the
        attention within frames, and the frames' own layout changes of the tensor that holds
        them (its first argument; others may give only a dtype); every other op runs on the
        token grid (frames x tokens of a frame)."""
        rule = FRAME_TARGET_RULES.get(node.target)
        if rule is None:
            x = node.args[0] if node.args else None
            others = [a for a in node.all_input_nodes if a is not x and self.ax(a) is not None]
            if self.ax(x) is not None and (not others or name in DATA_FIRST_ONLY):
                rule = FRAME_RULES.get(name)
        return self.on_grid(node, name) if rule is None else rule(self, node, name)

    def on_grid(self, node: fx.Node, name: str):
        """The rule for an op on image tokens laid out on their grid (token_rules.grid);
        where the tokens are back in sequence order on one axis, its result is a TokenAxis."""
        if not node.args:
            self.fail(node, "called with keyword arguments only")
        rule = GRID_TARGET_RULES.get(node.target) or GRID_RULES.get(name)
        if rule is None:
            operand_grid(self, node, node.args[0])     # fails first if tokens come otherwise
            self.fail(node, "this op on image tokens laid out on their grid is not known to be token-wise")
        return rule(self, node, name)
