"""The common shapes every source is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Interactions:
    """One row per interaction (user, item, timestamp) plus the item table (item -> title, optional genres)."""

    users: list[str]
    items: list[str]
    timestamps: list[float]
    titles: dict[str, str]
    genres: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def user_sequences(self) -> dict[str, list[tuple[float, str]]]:
        """Each user's (timestamp, item) list in time order; ties keep file order (a stable sort)."""
        sequences: dict[str, list[tuple[float, str]]] = {}
        for user, item, ts in zip(self.users, self.items, self.timestamps):
            sequences.setdefault(user, []).append((ts, item))
        for seq in sequences.values():
            seq.sort(key=lambda pair: pair[0])
        return sequences


@dataclass(frozen=True)
class Sample:
    """One prompt: a user's last items (oldest first) and the item(s) to predict."""

    user: str
    history: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass
class RecData:
    """A source after splitting: what every later stage reads."""

    source: str
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]
    titles: dict[str, str]
    genres: dict[str, list[str]]
    train_pairs: list[tuple[str, str]]
    """(user, item) interactions of the training period: for the MF partitioner and the popularity ranking."""
    num_users: int
    num_interactions: int
    notes: list[str] = field(default_factory=list)
    """What the data stage dropped or assumed, said once to the user."""

    @property
    def num_items(self) -> int:
        return len(self.titles)


def natural_key(value: str) -> tuple:
    """Sort ids numerically when they are numbers ("2" < "10"), otherwise as text; never by hash order."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)
