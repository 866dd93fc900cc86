"""What the backend did with each graph: a dataclass that prints as a table and saves as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Optional

from jano_compile.passes.signature import GraphSignature


@dataclass
class GraphReport:
    """The rewrite of one dynamo graph, or why it was left as it is."""
    graph: str
    rewritten: bool
    reason: Optional[str] = None          # why not rewritten; None when rewritten
    holds_image_tokens: bool = True       # False: nothing to do (e.g. a graph after a break)
    num_image_tokens: Optional[int] = None
    entry: Optional[str] = None
    exit: Optional[str] = None
    attention: list = field(default_factory=list)   # {"node", "kind", "layout", "how"}
    literals: list = field(default_factory=list)    # {"node", "what"}
    tables: list = field(default_factory=list)      # {"node", "table", "dim", "layout"}
    mixing: list = field(default_factory=list)      # {"node", "operands", "how"}: ops that mix tokens
    signature: Optional[GraphSignature] = None      # calling convention of the rewritten graph
    skip_steps: Optional[str] = None      # how a step that computes no image token runs, or why not

    @property
    def caches(self) -> list[dict]:
        """The states the rewritten graph reads and writes in place (StateSpec.describe() each)."""
        return [s.describe() for s in self.signature.states] if self.signature else []

    @property
    def self_attention_count(self) -> int:
        return sum(a["kind"] == "self" for a in self.attention)

    @property
    def cross_attention_count(self) -> int:
        return sum(a["kind"] == "cross" for a in self.attention)

    @property
    def to_image_attention_count(self) -> int:
        """Attention of queries without image tokens (audio, text) to image keys."""
        return sum(a["kind"] == "to_image" for a in self.attention)

    @property
    def cache_bytes(self) -> int:
        return self.signature.state_bytes if self.signature else 0

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "signature"}
        d["caches"] = self.caches
        d["cache_bytes"] = self.cache_bytes
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def __str__(self) -> str:
        lines = [f"graph {self.graph}: " + ("rewritten" if self.rewritten else
                                            f"NOT rewritten ({self.reason})")]
        if not self.rewritten:
            return lines[0]
        lines.append(f"  image tokens {self.num_image_tokens}   entry {self.entry}   exit {self.exit}")
        to_image = (f", {self.to_image_attention_count} to image (K/V cached)"
                    if self.to_image_attention_count else "")
        lines.append(f"  attention: {self.self_attention_count} self/joint (K/V cached), "
                     f"{self.cross_attention_count} cross (untouched){to_image}")
        rows = [("attention", a["node"], f'{a["kind"]:8s} {a["layout"]}  {a["how"]}') for a in self.attention]
        rows += [("literal", r["node"], r["what"]) for r in self.literals]
        rows += [("table", t["node"], f'{t["table"]} gathered on dim {t["dim"]} {t["layout"]}')
                 for t in self.tables]
        rows += [("mixing", m["node"], f'{", ".join(m["operands"])} completed from caches; {m["how"]}')
                 for m in self.mixing]
        width = max([len(r[1]) for r in rows] + [4])
        lines.append(f"  {'kind':10s} {'node':{width}s} detail")
        lines += [f"  {k:10s} {n:{width}s} {d}" for k, n, d in rows]
        mib = self.cache_bytes / 2**20
        lines.append(f"  caches: {len(self.caches)} tensors, {mib:.2f} MiB per branch")
        lines.append(f"  skip steps: {self.skip_steps}")
        return "\n".join(lines)


@dataclass
class Report:
    """All graphs of one model (what `explain` returns)."""
    graphs: list

    @property
    def rewritten(self) -> bool:
        """Every graph holding image tokens was rewritten (and there is at least one)."""
        holding = [g for g in self.graphs if g.holds_image_tokens]
        return bool(holding) and all(g.rewritten for g in holding)

    @property
    def reasons(self) -> list:
        """Why the graphs holding image tokens were not rewritten."""
        return [g.reason for g in self.graphs if g.holds_image_tokens and not g.rewritten]

    @property
    def fallback_reason(self) -> Optional[str]:
        """Why the model is not (wholly) rewritten, each distinct reason once; None when it
        is. Where no graph holds image tokens, the reasons of every graph."""
        if not self.graphs:
            return "not called yet: graphs are captured and rewritten at the first call"
        reasons = self.reasons
        if not reasons and not any(g.rewritten for g in self.graphs):
            reasons = [g.reason or "no reason recorded" for g in self.graphs]
        if not reasons:
            return None
        text = "; ".join(dict.fromkeys(reasons))
        rewritten = sum(g.rewritten for g in self.graphs)
        if len(self.graphs) > 1 and not rewritten:
            text = (f"{len(self.graphs)} graphs, none rewritten (several graphs come from runs at several "
                    "shapes, or from graph breaks that split the forward into pieces, which jano cannot "
                    f"rewrite: torch._dynamo.explain(model)(**inputs) lists the breaks): {text}")
        elif rewritten:     # a forward split by graph breaks: the rewritten pieces still save work
            holding = sum(g.holds_image_tokens for g in self.graphs)
            text = (f"{rewritten} of {holding} graphs holding image tokens rewritten (those skip work; "
                    f"the others compute every token): {text}")
        return text

    def to_json(self) -> str:
        return json.dumps([g.to_dict() for g in self.graphs], indent=2, default=str)

    def __str__(self) -> str:
        return "\n".join(str(g) for g in self.graphs) or "no graph captured"
