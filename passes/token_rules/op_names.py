"""Op names the token rules group by what the ops do to a token axis (dynamo records
`torch.add`, `Tensor.add` and `operator.add` alike under the name `add`)."""

POINTWISE = frozenset({
    "add", "sub", "mul", "truediv", "div", "floordiv", "pow", "neg", "iadd", "isub", "imul",
    "itruediv", "exp", "sin", "cos", "tanh", "sigmoid", "sqrt", "rsqrt", "abs", "clamp", "clip",
    "gelu", "silu", "relu", "mish", "erf", "log", "square", "reciprocal", "where", "lerp",
    "dropout", "float", "half", "bfloat16", "double", "contiguous", "clone", "detach",
    "add_", "sub_", "mul_", "div_", "clamp_", "clip_", "masked_fill", "minimum", "maximum",
    "addcmul", "addcmul_", "addcdiv", "addcdiv_", "sign", "softplus", "leaky_relu", "elu", "hardtanh",
    "nan_to_num",
})
# the first argument carries the values; the others give only a dtype or device
DATA_FIRST_ONLY = frozenset({"to", "type_as", "type", "float", "half", "bfloat16", "double",
                             "contiguous", "clone", "detach", "dropout"})
LIKE = frozenset({"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like"})
REDUCTIONS = frozenset({"sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "prod",
                        "logsumexp", "argmax", "argmin", "all", "any", "cumsum", "var_mean"})
ORDER_DEPENDENT = frozenset({"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"})
NEW_OF_SIZE = frozenset({"new_zeros", "new_ones", "new_full", "new_empty"})
PLACED_BY_INDEX = frozenset({"index_copy", "index_copy_", "index_add", "index_add_", "scatter", "scatter_",
                             "scatter_add", "scatter_add_", "index_select", "gather"})
CONVOLUTIONS = frozenset({"conv1d", "conv2d", "conv3d"})
PERMUTATIONS = frozenset({"transpose", "swapaxes", "permute", "movedim"})
CONCATENATIONS = frozenset({"cat", "concat", "concatenate"})
SPLITS = frozenset({"split", "split_with_sizes", "chunk", "unbind", "tensor_split"})
CHANNEL_WISE = frozenset({"linear", "layer_norm", "rms_norm"})
