"""benchmarks/profile_step.py's per-call timeline reads a real profile correctly: host time
before the first op, idle time between ops, and the ops' busy time, each call apart."""
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from .benchmark_modules import load


def test_timeline_splits_each_call_into_host_wait_idle_and_busy():
    """Each part of a call's timeline against the test's own clock around the same code:
    the sleeps bound the host wait and the idle time from below, the ops' wall time bounds
    the busy time from above (busy holding a sleep would exceed it by 20 ms), and the parts
    add up to the range. Bounds from measured times, not fixed ones: on a loaded machine a
    64x64 matmul can take 20 ms."""
    step = load("profile_step")
    a = torch.randn(64, 64)
    clock = []          # per call: (until the first op, the ops' wall time, after the last op)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("step: other"):
            torch.mm(a, a)
        for _ in range(2):
            entered = time.perf_counter()
            with record_function("step: probe"):
                time.sleep(0.030)           # host work before the first op
                first = time.perf_counter()
                torch.mm(a, a)
                between = time.perf_counter()
                time.sleep(0.020)           # nothing runs between the two ops
                second = time.perf_counter()
                torch.relu(torch.mm(a, a))
                last = time.perf_counter()
            left = time.perf_counter()
            clock.append((1e3 * (first - entered), 1e3 * ((between - first) + (last - second)),
                          1e3 * (left - last)))
    timelines = step.call_timelines(prof.events(), "step: probe", step.top_level_op)
    assert len(timelines) == 2              # the other range's op belongs to neither call
    for t, (until_first, ops, after) in zip(timelines, clock):
        assert 30 <= t["before_first"] <= until_first + 1
        assert 0 < t["busy"] <= ops + 1     # three small ops, not the sleeps
        assert t["idle"] >= 20
        assert abs(t["after_last"]) <= after + 1     # the range closes right after the last op
        assert t["host"] >= 50
        assert abs(t["before_first"] + t["busy"] + t["idle"] + t["after_last"] - t["host"]) < 1e-6


def test_union_length_counts_overlaps_once():
    step = load("profile_step")
    assert step._union_length([(0, 4), (2, 6), (10, 11), (10.5, 10.7)]) == 7
    assert step._union_length([]) == 0


def test_device_work_leaves_out_the_step_range_on_the_device_timeline():
    """On CUDA the profiler lists the step's record_function range on the device's timeline
    too, with the whole step's time: it is not a kernel, and counting it doubles the busy
    time. Host ops are not device work there; on a CPU they are (but the range is not)."""
    from types import SimpleNamespace
    from torch.autograd import DeviceType
    step = load("profile_step")
    averages = [SimpleNamespace(key="step: probe", device_type=DeviceType.CUDA),
                SimpleNamespace(key="step: probe", device_type=DeviceType.CPU),
                SimpleNamespace(key="triton_poi_fused_gelu_0", device_type=DeviceType.CUDA),
                SimpleNamespace(key="aten::mm", device_type=DeviceType.CPU)]
    assert [e.key for e in step.work_averages(averages, "step: probe", cuda=True)] == ["triton_poi_fused_gelu_0"]
    assert ([e.key for e in step.work_averages(averages, "step: probe", cuda=False)]
            == ["triton_poi_fused_gelu_0", "aten::mm"])
