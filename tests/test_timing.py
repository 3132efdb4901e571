"""bench/timing.py: variants timed in turn within one loop, ratios taken within each loop."""

import pytest

from bench import timing


class DriftingMachine:
    """A fake clock on a machine whose load doubles after every loop of calls (another job starting)."""

    def __init__(self):
        self.now, self.load, self.calls = 0.0, 1.0, []

    def perf_counter(self):
        return self.now

    def work(self, name, cost):
        def run():
            self.calls.append(name)
            self.now += cost * self.load
            if name == "B":  # the last variant of a loop
                self.load *= 2
        return run


def test_alternate_takes_turns_and_per_loop_ratios_ignore_drift(monkeypatch):
    machine = DriftingMachine()
    monkeypatch.setattr(timing.time, "perf_counter", machine.perf_counter)
    times = timing.alternate({"A": machine.work("A", 2.0), "B": machine.work("B", 1.0)}, repeats=4, warmup=1)
    assert machine.calls == ["A", "B"] * 5  # one untimed loop, then A, B, A, B, ...
    assert times["A"] == [4.0, 8.0, 16.0, 32.0] and times["B"] == [2.0, 4.0, 8.0, 16.0]
    # the load changed 8-fold over the run; within each loop A still costs exactly twice B
    assert timing.ratio(times, "A", "B") == {"median": 2.0, "min": 2.0, "max": 2.0, "iqr": [2.0, 2.0]}


def test_spread_gives_median_min_max_and_iqr():
    assert timing.spread([1.0, 2.0, 3.0, 4.0, 100.0]) == {"median": 3.0, "min": 1.0, "max": 100.0,
                                                           "iqr": [2.0, 4.0]}
    assert timing.spread([0.5]) == {"median": 0.5, "min": 0.5, "max": 0.5, "iqr": [0.5, 0.5]}
    with pytest.raises(ValueError, match="repeats"):
        timing.alternate({"A": lambda: None}, repeats=0)


def test_sync_brackets_every_timed_call():
    events = []
    timing.alternate({"A": lambda: events.append("A")}, repeats=2, warmup=0, sync=lambda: events.append("sync"))
    assert events == ["sync", "A", "sync"] * 2


def test_alternate_clocks_reads_every_clock_around_each_call():
    machine, cpu = DriftingMachine(), {"now": 0.0}
    work = {"A": machine.work("A", 2.0), "B": machine.work("B", 1.0)}

    def run(name):  # this process's CPU time moves by the cost alone, whatever the machine's load
        def call():
            cpu["now"] += {"A": 2.0, "B": 1.0}[name]
            work[name]()
        return call
    times = timing.alternate_clocks({name: run(name) for name in work},
                                    {"wall": machine.perf_counter, "cpu": lambda: cpu["now"]}, repeats=3, warmup=1)
    assert times["wall"] == {"A": [4.0, 8.0, 16.0], "B": [2.0, 4.0, 8.0]}
    assert times["cpu"] == {"A": [2.0, 2.0, 2.0], "B": [1.0, 1.0, 1.0]}
