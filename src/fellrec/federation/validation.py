"""The evaluation part of a run: each client's validation loss and ranking metrics after every round, the signal
the balance strategy reads, the item index the objectives share, and the final test of the best adapters."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from fellrec.errors import FellrecError
from fellrec.federation.local import validation_loss


def lazy_item_index(model, tokenizer, titles: dict[str, str], show_progress: bool) -> Callable:
    """A function returning the base model's item-title embeddings, built on the first call (and cached on disk
    across runs): a run that never grounds or scores never pays for it."""
    @functools.cache
    def item_index():
        from fellrec.evaluation.grounding import ItemIndex
        from fellrec.model.loading import cache_root

        with tqdm(total=len(titles), desc="embedding item titles", unit="item", leave=False,
                  disable=not show_progress) as bar:
            return ItemIndex.build(model, tokenizer, titles, cache_dir=cache_root() / "item-index", progress=bar)

    return item_index


class Validation:
    """Per client: the validation loss of its live adapter, its ranking metrics on a fixed sample of its validation
    users (with `eval.per_round`, or when `fed.signal` is recall/ndcg), and the signal the heating reads."""

    def __init__(self, cfg, objective, store, clients: dict, data, partition, device, autocast):
        self.cfg, self.objective, self.store, self.clients = cfg, objective, store, clients
        self.data, self.partition, self.device, self.autocast = data, partition, device, autocast
        self.ranking_signal = cfg.fed.strategy == "fellrec" and cfg.fed.signal in ("recall", "ndcg")
        self.round_eval = self._round_evaluator() if self.ranking_signal or cfg.eval.per_round else None

    def _round_evaluator(self):
        from fellrec.evaluation.round_eval import RoundEvaluator

        evaluator = RoundEvaluator(self.objective, self.data, self.partition, self.cfg.eval)
        blind = [c for c, d in self.clients.items() if d.train and not evaluator.has_users(c)]
        if self.ranking_signal and blind:
            raise FellrecError(f"fed.signal={self.cfg.fed.signal} ranks each client's validation users, but clients "
                               f"{blind} have none: use train_loss or val_loss")
        return evaluator

    def loss(self, client: int) -> float:
        sides = self.store.activate(client)
        return validation_loss(sides, self.objective, self.clients[client].valid, self.cfg.train.micro_batch_size,
                               self.device, self.autocast)

    def ranking(self, client: int) -> dict[str, float]:
        """Ranking metrics of `client`'s live adapter ({} when the run does not rank each round)."""
        return self.round_eval.metrics(client) if self.round_eval is not None else {}

    def signal(self, client: int) -> Optional[float]:
        """The freshly trained adapter's validation signal when the balance strategy asks for one."""
        if self.cfg.fed.signal == "val_loss":
            return self.loss(client)
        if self.ranking_signal:
            return self.ranking(client)[f"{self.cfg.fed.signal}@10"]
        return None

    def evaluate_best(self, run_dir: Path, best_round: dict) -> dict:
        """Every client's best adapter (by validation loss) on its test users: results.json and results.csv in the
        run directory, the per-client bar chart beside them."""
        from fellrec.evaluation.checkpoint_eval import evaluate_test_users, write_results

        for c in self.clients:
            if (run_dir / "best" / f"client_{c}").is_dir():
                self.store.load(c, run_dir / "best" / f"client_{c}")
        results = evaluate_test_users(self.cfg.eval, self.objective, self.data, self.partition, run_dir)
        results["checkpoint"] = str(run_dir / "best")
        results["best_round"] = best_round
        write_results(results, run_dir)
        return results
