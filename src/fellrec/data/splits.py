"""Train/valid/test splits and the sliding-window training samples built from them."""

from __future__ import annotations

from fellrec.data.table import Interactions, RecData, Sample, natural_key
from fellrec.errors import FellrecError


def sliding_windows(user: str, sequence: list[str], max_history: int) -> list[Sample]:
    """One training sample per item after the first: its (at most `max_history`) predecessors predict it."""
    return [Sample(user, tuple(sequence[max(0, j - max_history):j]), (sequence[j],))
            for j in range(1, len(sequence))]


def leave_one_out(table: Interactions, source: str, max_history: int) -> RecData:
    """Per user in time order: the last item is the test target, the one before it the validation target, the
    rest is training. Users with fewer than 3 interactions only train."""
    train, valid, test, pairs = [], [], [], []
    short = 0
    for user, seq in _sorted_sequences(table):
        items = [item for _, item in seq]
        if len(items) >= 3:
            train_items = items[:-2]
            valid.append(Sample(user, tuple(items[:-2][-max_history:]), (items[-2],)))
            test.append(Sample(user, tuple(items[:-1][-max_history:]), (items[-1],)))
        else:
            train_items = items
            short += 1
        train.extend(sliding_windows(user, train_items, max_history))
        pairs.extend((user, item) for item in train_items)
    notes = [f"{short} users with fewer than 3 interactions only train"] if short else []
    return _rec_data(table, source, train, valid, test, pairs, notes)


def global_time(table: Interactions, source: str, max_history: int,
                ratios: tuple[float, float, float]) -> RecData:
    """One chronological cut for everybody (the paper's split): interactions before the `ratios[0]` quantile of
    time train, the next `ratios[1]` validate, the rest test. A validation or test user's history is everything
    they did before that period (last `max_history` items); their targets are all their items in the period."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise FellrecError(f"data.split_ratios must be three non-negative fractions summing to 1, got {ratios}")
    stamps = sorted(table.timestamps)
    valid_from = stamps[min(int(ratios[0] * len(stamps)), len(stamps) - 1)]
    test_from = stamps[min(int((ratios[0] + ratios[1]) * len(stamps)), len(stamps) - 1)]
    train, valid, test, pairs = [], [], [], []
    no_history = 0
    for user, seq in _sorted_sequences(table):
        before_valid = [item for ts, item in seq if ts < valid_from]
        in_valid = [item for ts, item in seq if valid_from <= ts < test_from]
        before_test = [item for ts, item in seq if ts < test_from]
        in_test = [item for ts, item in seq if ts >= test_from]
        train.extend(sliding_windows(user, before_valid, max_history))
        pairs.extend((user, item) for item in before_valid)
        for history, targets, bucket in ((before_valid, in_valid, valid), (before_test, in_test, test)):
            if targets and history:
                bucket.append(Sample(user, tuple(history[-max_history:]), tuple(dict.fromkeys(targets))))
            elif targets:
                no_history += 1
    notes = [f"{no_history} validation/test users without earlier history were dropped"] if no_history else []
    return _rec_data(table, source, train, valid, test, pairs, notes)


def _sorted_sequences(table: Interactions):
    sequences = table.user_sequences()
    return [(user, sequences[user]) for user in sorted(sequences, key=natural_key)]


def _rec_data(table: Interactions, source: str, train, valid, test, pairs, notes) -> RecData:
    return RecData(source=source, train=train, valid=valid, test=test, titles=table.titles, genres=table.genres,
                   train_pairs=pairs, num_users=len(set(table.users)), num_interactions=len(table), notes=notes)
