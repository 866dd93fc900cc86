"""FX passes of jano-compile, applied in the order of `REWRITE_PASSES`.

`token_layout` analyses the dynamo graph and returns a `TokenPlan` (or raises
`Unrewritable`); every rewriting pass is then a function (GraphModule, TokenPlan) ->
GraphModule that applies one part of the plan.
"""
import functools

from .dense_variant import dense_variant
from .forecast import forecast
from .gather_scatter import gather_scatter
from .input_roles import InputRoles, input_roles
from .kv_cache import kv_cache
from .kv_forecast import kv_forecast
from .plan import NoImageTokens, PassConfig, TokenPlan, Unrewritable
from .skip_tail import skip_tail
from .token_layout import token_layout
from .token_mixing import token_mixing
from .token_shapes import token_shapes

# Order matters: gather_scatter creates the `active_index` input and the exit scatter that
# the others read; kv_cache and token_mixing complete what reads every token (their caches
# follow the output cache among the states); token_shapes then rewrites the literals left on
# the gathered path; forecast replaces the scatter's held cache; kv_forecast reads the
# step time forecast declares.
REWRITE_PASSES = (gather_scatter, kv_cache, token_mixing, token_shapes)


def rewrite_passes(config: PassConfig = PassConfig()) -> tuple:
    """The passes for `config`, in order; each is (GraphModule, TokenPlan) -> GraphModule."""
    if config.reuse == "forecast":
        return REWRITE_PASSES + (functools.partial(forecast, order=config.forecast_order),) + \
            ((kv_forecast,) if config.forecast_kv else ())
    return REWRITE_PASSES


__all__ = ["REWRITE_PASSES", "InputRoles", "NoImageTokens", "PassConfig", "TokenPlan", "Unrewritable",
           "dense_variant", "forecast", "gather_scatter", "input_roles", "kv_cache", "kv_forecast", "rewrite_passes",
           "skip_tail", "token_layout", "token_mixing", "token_shapes"]
