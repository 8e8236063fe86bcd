"""siglayer._timing.interleaved_medians, the benchmarks' timer: which calls it makes.
Its figures are timings (bench/); here only the sequence of calls is checked."""

from __future__ import annotations

import itertools

import pytest

from siglayer._timing import interleaved_medians


def recorder(log: list[str], name: str):
    def call() -> None:
        log.append(name)

    return call


@pytest.mark.parametrize("warmup", [0.0, None], ids=["no warm-up", "default"])
def test_back_to_back_makes_no_untimed_call(warmup):
    """With no pause and no warm-up each turn is its timed calls alone (one each, with a
    round of 0 s): after the calibration (one call, then three timed for the fastest),
    the contenders alternate strictly. Before, every turn began with one untimed call,
    which let a pool woken by the previous contender settle. Without a pause the default
    warm-up is none."""
    log: list[str] = []
    medians = interleaved_medians(
        {"a": recorder(log, "a"), "b": recorder(log, "b")},
        rounds=5,
        min_round_seconds=0.0,
        settle_seconds=0.0,
        warmup_seconds=warmup,
    )
    assert log == ["a"] * 4 + ["b"] * 4 + ["a", "b"] * 5
    assert set(medians) == {"a", "b"} and all(t >= 0 for t in medians.values())


@pytest.mark.parametrize("warmup", [1e-9, 2e-3])
def test_a_warm_up_makes_at_least_one_untimed_call(warmup):
    """warmup_seconds > 0: at least one untimed call before each turn's timed one."""
    log: list[str] = []
    interleaved_medians(
        {"a": recorder(log, "a"), "b": recorder(log, "b")},
        rounds=3,
        min_round_seconds=0.0,
        settle_seconds=0.0,
        warmup_seconds=warmup,
    )
    turns = log[8:]
    runs = [len(list(group)) for _, group in itertools.groupby(turns)]
    assert len(runs) == 6 and all(n >= 2 for n in runs), runs
