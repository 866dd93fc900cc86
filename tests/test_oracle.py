"""Partial steps reproduce the full step on every family (eager lowering of the rewrite)."""
import random

import pytest
import torch
from hypothesis import given, strategies as st

from .models import FAMILIES
from .oracle import check_oracle


def _random_subset(seed):
    return lambda n: sorted(random.Random(seed).sample(range(n), n // 3))


STANDARD_SUBSETS = [[], [0], _random_subset(1), lambda n: [n - 1], lambda n: list(range(n))]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch,dtype", [(1, torch.float32), (2, torch.bfloat16)])
def test_partial_steps_match_full_step(family, batch, dtype):
    ctl, n = check_oracle(family, batch, dtype, STANDARD_SUBSETS)
    stats = ctl.stats()
    assert stats["calls"] == 1 + len(STANDARD_SUBSETS)
    assert stats["full_calls"] == 1
    assert stats["active_fraction"] == 1.0  # the last subset is every token


@st.composite
def configs(draw):
    """A family and a grid, sometimes with the token count equal to the head dim or the text
    length, so that a rewrite keyed on literal values would go wrong."""
    family = draw(st.sampled_from(sorted(FAMILIES)))
    h = draw(st.integers(2, 4))
    w = h if FAMILIES[family].square_only else draw(st.integers(2, 4))
    frames = draw(st.integers(1, 2)) if family in ("wan", "cogvideox", "cogvideox_rope") else None
    size = dict(h=h, w=w) if frames is None else dict(h=h, w=w, frames=frames)
    n = h * w * (frames or 1)
    coincide = draw(st.sampled_from(["none", "head_dim", "text"]))
    if coincide == "head_dim" and n % 2 == 0 and n >= 8 and not (family == "wan" and n % 6):
        size["head_dim"] = n
    elif coincide == "text" and family != "dit":
        size["text"] = n
    elif family != "dit":
        size["text"] = draw(st.integers(1, 7))
    batch = draw(st.integers(1, 2))
    k = draw(st.integers(0, n))
    subset = sorted(draw(st.permutations(list(range(n))))[:k])
    return family, batch, size, subset


@given(configs())
def test_drawn_configs_and_subsets(config):
    family, batch, size, subset = config
    check_oracle(family, batch, torch.float32, [subset, [], lambda n: list(range(n))], **size)
