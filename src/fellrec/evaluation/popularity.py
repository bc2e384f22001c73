"""The non-LLM sanity floor: recommend the most popular training items the user has not seen yet."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from fellrec.data.table import Sample, natural_key


class PopularityRanker:
    def __init__(self, train_pairs: Iterable[tuple[str, str]]):
        counts = Counter(item for _, item in train_pairs)
        # Ties break by item id so the ranking never depends on dict order.
        self.order = sorted(counts, key=lambda item: (-counts[item], natural_key(item)))

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        seen = set(history)
        top = []
        for item in self.order:
            if item not in seen:
                top.append(item)
                if len(top) == k:
                    break
        return top

    def rank_samples(self, samples: Sequence[Sample], k: int) -> list[list[str]]:
        return [self.recommend(s.history, k) for s in samples]
