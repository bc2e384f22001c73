"""Leave-one-out and global-time splits on hand-made tables, and few-shot sampling."""

from __future__ import annotations

import pytest

from fellrec.config import DataArgs
from fellrec.data.pipeline import load_data, resolved_split, sample_subset
from fellrec.data.splits import global_time, leave_one_out, sliding_windows
from fellrec.data.table import Interactions, Sample
from fellrec.errors import FellrecError


def _table(rows: list[tuple[str, str, float]]) -> Interactions:
    users, items, stamps = zip(*rows)
    return Interactions(list(users), list(items), list(stamps), {i: f"T{i}" for i in set(items)})


def test_sliding_windows_cap_the_history():
    samples = sliding_windows("u", ["a", "b", "c", "d"], max_history=2)
    assert samples == [Sample("u", ("a",), ("b",)), Sample("u", ("a", "b"), ("c",)), Sample("u", ("b", "c"), ("d",))]


def test_leave_one_out_orders_by_time_not_by_file():
    # u1's rows are shuffled in the file; u2 has only two interactions and therefore only trains.
    table = _table([("u1", "c", 3), ("u1", "a", 1), ("u1", "e", 5), ("u1", "b", 2), ("u1", "d", 4),
                    ("u2", "x", 1), ("u2", "y", 2)])
    data = leave_one_out(table, "t", max_history=10)
    assert data.test == [Sample("u1", ("a", "b", "c", "d"), ("e",))]
    assert data.valid == [Sample("u1", ("a", "b", "c"), ("d",))]
    assert data.train == [Sample("u1", ("a",), ("b",)), Sample("u1", ("a", "b"), ("c",)), Sample("u2", ("x",), ("y",))]
    assert sorted(data.train_pairs) == [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "x"), ("u2", "y")]
    assert data.notes == ["1 users with fewer than 3 interactions only train"]


def test_global_time_split_uses_one_cut_for_everybody():
    # 10 interactions at times 0..9: ratios 0.6/0.2/0.2 cut at t=6 (valid) and t=8 (test).
    rows = [("u1", "a", 0), ("u1", "b", 1), ("u2", "c", 2), ("u1", "d", 3), ("u2", "e", 4), ("u1", "f", 5),
            ("u1", "g", 6), ("u2", "h", 7), ("u1", "i", 8), ("u1", "j", 9)]
    data = global_time(_table(rows), "t", max_history=3, ratios=(0.6, 0.2, 0.2))
    assert data.valid == [Sample("u1", ("b", "d", "f"), ("g",)), Sample("u2", ("c", "e"), ("h",))]
    assert data.test == [Sample("u1", ("d", "f", "g"), ("i", "j"))]  # all test-period items are targets
    assert Sample("u1", ("a", "b", "d"), ("f",)) in data.train and len(data.train) == 4
    assert ("u1", "g") not in data.train_pairs  # nothing after the training period leaks into training


def test_global_time_drops_users_without_earlier_history():
    rows = [("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u2", "z", 3)]
    data = global_time(_table(rows), "t", max_history=10, ratios=(0.5, 0.25, 0.25))
    assert [s.user for s in data.test] == []
    assert data.notes == ["1 validation/test users without earlier history were dropped"]


def test_global_time_rejects_bad_ratios():
    with pytest.raises(FellrecError, match="split_ratios"):
        global_time(_table([("u", "a", 0)]), "t", 10, (0.5, 0.5, 0.5))


def test_few_shot_sampling_is_seeded_and_keeps_order():
    samples = [Sample(str(i), ("a",), ("b",)) for i in range(100)]
    first = sample_subset(samples, 10, seed=7, key="k", notes=[])
    assert first == sample_subset(samples, 10, seed=7, key="k", notes=[])
    assert first != sample_subset(samples, 10, seed=8, key="k", notes=[])
    assert [int(s.user) for s in first] == sorted(int(s.user) for s in first)


def test_movielens_pipeline_with_both_splits():
    loo = load_data(DataArgs(train_samples=1024))
    assert (len(loo.train), len(loo.valid), len(loo.test)) == (1024, 943, 943)
    assert len(loo.train_pairs) == 100000 - 2 * 943
    assert resolved_split(DataArgs()) == "leave_one_out"
    assert resolved_split(DataArgs(source="amazon2018")) == "global_time"
    timed = load_data(DataArgs(split="global_time"))
    assert len(timed.train_pairs) in range(79_000, 81_000)
    assert all(len(s.history) <= 10 for s in timed.test) and any(len(s.targets) > 1 for s in timed.test)


def test_csv_pipeline_with_global_time(csv_dir):
    data = load_data(DataArgs(source="csv", path=str(csv_dir), split="global_time"))
    # Timestamps 100*step + user, 30 rows: the cuts fall at sorted rows 24 (t=400) and 27 (t=403), so users u0-u2
    # validate on their last item and u3-u5 are tested on theirs.
    assert [s.user for s in data.valid] == ["u0", "u1", "u2"] and [s.user for s in data.test] == ["u3", "u4", "u5"]
    assert data.test[0] == Sample("u3", ("i3", "i4", "i5", "i6"), ("i7",))


def test_amazon_pipeline_defaults_to_the_papers_global_time_split(amazon_dir):
    data = load_data(DataArgs(source="amazon2018", path=str(amazon_dir)))
    # 36 interactions at 1000*k + u: the cuts fall at t=4004 (valid) and t=5002 (test).
    assert [s.user for s in data.valid] == ["U0", "U1", "U4", "U5"]
    assert [s.user for s in data.test] == ["U2", "U3", "U4", "U5"]
    assert data.test[0] == Sample("U2", ("A0", "A1", "A2", "A3", "A4"), ("A5",))
