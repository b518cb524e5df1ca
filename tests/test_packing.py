"""causal-lm packing order: best fit decreasing (no training)."""

from __future__ import annotations

import random

import pytest

from hpcft.worker.data.packing import IGNORE, best_fit_decreasing, pack


def _in_order(lengths: list[int], capacity: int) -> int:
    """Rows that packing in the data's order (hpcft's packing before best fit) made."""
    rows, cur = 0, 0
    for n in lengths:
        if cur and cur + n > capacity:
            rows, cur = rows + 1, 0
        cur += n
    return rows + (1 if cur else 0)


def _brute_best_fit(lengths: list[int], capacity: int) -> int:
    space: list[int] = []
    for n in sorted(lengths, reverse=True):
        fits = [k for k, s in enumerate(space) if s >= n]
        if fits:
            k = min(fits, key=lambda k: space[k])
            space[k] -= n
        else:
            space.append(capacity - n)
    return len(space)


def test_best_fit_decreasing_packs_fewer_rows_than_the_data_order():
    lengths = [5, 6, 5, 4, 4, 6]
    assert _in_order(lengths, 10) == 4
    bins = best_fit_decreasing(lengths, 10)
    # the optimum: 30 tokens in 3 full rows of 10
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[4, 6], [4, 6], [5, 5]]


def test_every_example_once_within_capacity_and_as_a_plain_best_fit_would():
    r = random.Random(0)
    for _ in range(150):
        cap = r.choice((16, 64, 256))
        lengths = [r.randint(0, cap) for _ in range(r.randint(1, 80))]
        bins = best_fit_decreasing(lengths, cap)
        assert sorted(i for b in bins for i in b) == [i for i, n in enumerate(lengths) if n > 0]
        assert all(sum(lengths[i] for i in b) <= cap for b in bins)
        assert len(bins) == _brute_best_fit([n for n in lengths if n], cap)
    # instruction-like lengths (most answers short, a long tail): nearly every row full
    lengths = [r.randint(20, 28) if r.random() < 0.7 else r.randint(60, 150) for _ in range(3000)]
    bins = best_fit_decreasing(lengths, 256)
    assert len(bins) <= sum(lengths) / 256 * 1.02 < _in_order(lengths, 256)


def test_packed_rows_keep_each_example_whole_and_refuse_one_too_long():
    examples = [{"input_ids": list(range(100 * k, 100 * k + n)), "labels": list(range(100 * k, 100 * k + n))}
                for k, n in enumerate((3, 6, 2, 5, 4))]
    rows = pack(examples, 10)
    assert [len(r["input_ids"]) for r in rows] == [10, 10]  # 6+4, 5+3+2
    assert rows[0]["input_ids"] == [*range(100, 106), *range(400, 404)]
    assert rows[0]["labels"] == [IGNORE, *range(101, 106), IGNORE, *range(401, 404)]
    assert rows[1]["position_ids"] == [*range(5), *range(3), *range(2)]
    with pytest.raises(ValueError, match="an example of 11 tokens does not fit a sequence of 10"):
        best_fit_decreasing([11], 10)
