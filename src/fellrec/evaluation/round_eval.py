"""The per-round evaluation callback: each client's ranking metrics on a fixed sample of its validation users.

It feeds `fed.signal: recall | ndcg` to the balance strategy (the metric of the client's freshly trained adapter) and,
with `eval.per_round`, the per-client ranking curves and their balance over rounds (after aggregation). It ranks
through the run's objective, the same path as the final evaluation.
"""

from __future__ import annotations

from fellrec.config import EvalArgs
from fellrec.data.pipeline import sample_subset
from fellrec.data.table import RecData
from fellrec.evaluation.evaluate import client_samples

ROUND_METRICS = ("recall@10", "ndcg@10")
"""The metrics logged each round; `fed.signal: ndcg` reads ndcg@10, `recall` reads recall@10."""


class RoundEvaluator:
    def __init__(self, objective, data: RecData, partition, args: EvalArgs):
        self.objective, self.args = objective, args
        self.samples = {c: sample_subset(s, args.val_users_per_client, args.seed + 7919 * (c + 1),
                                         "eval.val_users_per_client")
                        for c, s in client_samples(partition, data.valid).items()}

    def has_users(self, client: int) -> bool:
        return bool(self.samples.get(client))

    def metrics(self, client: int) -> dict[str, float]:
        """ROUND_METRICS of `client`'s current adapter on its validation sample ({} when it has no users)."""
        if not self.has_users(client):
            return {}
        report = self.objective.evaluate({client: self.samples[client]}, self.args.mask, progress=False)
        row = report["clients"][0]
        return {name: row[name] for name in ROUND_METRICS}
