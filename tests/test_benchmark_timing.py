"""benchmarks/common.py's interleaved timings: the settings take turns call by call, and
block by block with the order rotated each round, so that a machine whose speed drifts
slows every setting alike."""
from .benchmark_modules import load


def test_settings_take_turns_and_each_round_starts_at_the_next():
    common = load("common")
    log = []
    settings = {name: (lambda name=name: log.append(name)) for name in "abc"}
    single, in_row = common.interleaved_timings(settings, range(3), calls=2, in_a_row=4, device="cpu")
    assert {k: len(v) for k, v in single.items()} == {"a": 6, "b": 6, "c": 6}
    assert {k: len(v) for k, v in in_row.items()} == {"a": 3, "b": 3, "c": 3}
    per_round = len(log) // 3                # 2 single calls and 4 in a row per setting
    rounds = [log[i * per_round:(i + 1) * per_round] for i in range(3)]
    for r, calls in enumerate(rounds):
        order = "abc"[r:] + "abc"[:r]
        assert "".join(calls[:6]) == order * 2                                # call by call
        assert "".join(calls[6:]) == "".join(name * 4 for name in order)      # block by block
