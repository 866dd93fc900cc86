"""FX passes of jano-compile, applied in the order of `REWRITE_PASSES`.

`token_layout` analyses the dynamo graph and returns a `TokenPlan` (or raises
`Unrewritable`); every rewriting pass is then a function (GraphModule, TokenPlan) ->
GraphModule that applies one part of the plan.
"""
from .gather_scatter import gather_scatter
from .input_roles import InputRoles, input_roles
from .kv_cache import kv_cache
from .plan import NoImageTokens, TokenPlan, Unrewritable
from .token_layout import token_layout
from .token_shapes import token_shapes

# Order matters: gather_scatter creates the `active_index` input the others read.
REWRITE_PASSES = (gather_scatter, kv_cache, token_shapes)

__all__ = ["REWRITE_PASSES", "InputRoles", "NoImageTokens", "TokenPlan", "Unrewritable",
           "gather_scatter", "input_roles", "kv_cache", "token_layout", "token_shapes"]
