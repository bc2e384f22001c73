"""The per-round evaluation callback: each client's ranking metrics on a fixed sample of its validation users.

It feeds `fed.signal: recall | ndcg` to the balance strategy (the metric of the client's freshly trained adapter) and,
with `eval.per_round`, the per-client ranking curves and their balance over rounds (after aggregation).
"""

from __future__ import annotations

from fellrec.config import EvalArgs
from fellrec.data.pipeline import sample_subset
from fellrec.data.prompts import PromptStyle
from fellrec.data.table import RecData
from fellrec.evaluation.evaluate import client_samples, evaluate_clients
from fellrec.evaluation.grounding import ItemIndex

ROUND_METRICS = ("recall@10", "ndcg@10")
"""The metrics logged each round; `fed.signal: ndcg` reads ndcg@10, `recall` reads recall@10."""


class RoundEvaluator:
    def __init__(self, model, store, tokenizer, data: RecData, partition, style: PromptStyle, args: EvalArgs,
                 item_index: ItemIndex):
        self.model, self.store, self.tokenizer, self.data = model, store, tokenizer, data
        self.style, self.args, self.index = style, args, item_index
        self.samples = {c: sample_subset(s, args.val_users_per_client, args.seed + 7919 * (c + 1),
                                         "eval.val_users_per_client")
                        for c, s in client_samples(partition, data.valid).items()}

    def has_users(self, client: int) -> bool:
        return bool(self.samples.get(client))

    def metrics(self, client: int) -> dict[str, float]:
        """ROUND_METRICS of `client`'s current adapter on its validation sample ({} when it has no users)."""
        if not self.has_users(client):
            return {}
        report = evaluate_clients(self.model, self.store, self.tokenizer, self.data,
                                  samples_per_client={client: self.samples[client]}, style=self.style,
                                  num_beams=self.args.num_beams, max_new_tokens=self.args.max_new_tokens,
                                  item_index=self.index, grounding=self.args.grounding,
                                  batch_size=self.args.batch_size, progress=False, mask=self.args.mask)
        row = report["clients"][0]
        return {name: row[name] for name in ROUND_METRICS}
