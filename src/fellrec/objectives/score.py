"""The scoring recommender (RecFormer-like) on the split model.

The user vector is the client tail's final-norm state at the end of the prompt (or the mean of the states up to it);
the client's ScoreHead scores every item against it, and the loss is full-softmax cross-entropy over all items. Item
ids, the table and the scores stay on the client: the server only runs the middle blocks on hidden states.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fellrec.data.collate import IGNORE_INDEX
from fellrec.data.prompts import PromptStyle
from fellrec.data.score_samples import ScoreEncoder, collate_scores
from fellrec.data.table import Sample
from fellrec.errors import FellrecError
from fellrec.evaluation.metrics import DEFAULT_KS
from fellrec.model.score_head import PREFIX, ScoreHead, log_count_bias
from fellrec.objectives.base import lr_groups


PER_USER = ("ndcg@10", "recall@10")  # the per-user values results keep (test_users.csv): paired comparisons


class ScoreObjective:
    name = "score"

    def __init__(self, cfg, model, tokenizer, data, item_index_fn, autocast):
        self.cfg, self.model, self.tokenizer, self.data = cfg, model, tokenizer, data
        self.style, self.autocast = PromptStyle.from_args(cfg.data), autocast
        self.index = index = item_index_fn()
        self.items = index.items
        self.head = model.attach_score_head(ScoreHead(index.embeddings, cfg.model.score_scale))
        self.encoder = ScoreEncoder(tokenizer, self.style, data.titles, index.row, cfg.model.max_length,
                                    cfg.model.score_targets)
        self.store = None
        self.priors: dict[int, torch.Tensor] = {}  # score_bias client_prior: each client's fixed log-counts

    def init_clients(self, store, client_users: dict[int, set[str]]) -> None:
        """With `model.score_bias: log_count`, each client's bias starts at log(1 + count) of its own users'
        training interactions: the head starts at the client's popularity ranking. With `client_prior` those
        log-counts stay a fixed prior of the client's (recomputed from its data, never stored or uploaded)."""
        mode = self.cfg.model.score_bias
        if mode == "zero":
            return
        for client, users in client_users.items():
            counts = log_count_bias(self.items, (i for u, i in self.data.train_pairs if u in users))
            if mode == "client_prior":
                self.priors[client] = counts.to(self.model.device)
                continue
            state = dict(store.state(client))
            state[PREFIX + "bias"] = counts
            store.set_state(client, state)

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """The active client's head on `users`, plus its fixed prior where it has one."""
        scores = self.head(users).float()
        prior = self.priors.get(self.store.active) if self.priors else None
        return scores if prior is None else scores + prior

    def encode(self, samples: list[Sample]) -> list:
        return self.encoder.encode_all(samples)

    def collate(self, batch: list) -> dict[str, torch.Tensor]:
        return collate_scores(batch, self.tokenizer.pad_token_id)

    def user_vectors(self, sides, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the user vector at every read position, the target item row there): two tensors over the batch's
        positions that carry a target."""
        mask = batch["attention_mask"]
        hidden = sides.client.hidden(batch["input_ids"], mask)
        if self.cfg.model.score_pooling == "mean":  # the mean of the states up to each position (padding left out)
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            hidden = (hidden * weights).cumsum(1) / weights.cumsum(1).clamp(min=1)
        read = batch["targets"] != IGNORE_INDEX
        rows = torch.arange(len(hidden), device=hidden.device).unsqueeze(1).expand_as(read)
        return hidden[rows[read], batch["positions"][read]], batch["targets"][read]

    def loss(self, sides, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, targets = self.user_vectors(sides, batch)
        return F.cross_entropy(self.scores(users), targets)

    def param_groups(self, live: dict, train) -> list[dict]:
        return lr_groups(live, train.lr, lambda name: name.startswith(PREFIX), train.item_lr)

    @torch.no_grad()
    def score_samples(self, sides, samples: list[Sample], batch_size: int) -> torch.Tensor:
        """Users x items scores of the active client's head, the user vector read at the end of each prompt."""
        encoded = [self.encoder.encode(s) for s in samples]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))  # similar lengths together
        out = torch.empty(len(encoded), len(self.items))
        sides.eval()
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(self.model.device) for k, v in self.collate([encoded[i] for i in chunk]).items()}
            width = batch["input_ids"].shape[1]  # left padding: every prompt ends in the last column
            batch["positions"] = torch.full((len(chunk), 1), width - 1, device=self.model.device)
            batch["targets"] = torch.zeros((len(chunk), 1), dtype=torch.long, device=self.model.device)
            with self.autocast():
                users, _ = self.user_vectors(sides, batch)
                out[chunk] = self.scores(users).cpu()
        return out

    def evaluate(self, samples_per_client: dict[int, list[Sample]], mask: str, progress: bool = True,
                 ks=DEFAULT_KS) -> dict:
        from fellrec.evaluation.evaluate import client_report, masked_items, popularity_report
        from fellrec.evaluation.retrieval import per_user_metrics

        samples_per_client = {c: s for c, s in sorted(samples_per_client.items()) if s}
        masked = masked_items(self.data, samples_per_client, mask)
        row = self.index.row
        n_users = sum(len(s) for s in samples_per_client.values())
        start, previous, per_client, per_user, prior_clients = time.perf_counter(), self.store.active, {}, [], {}
        boundary = [0, 0]  # bytes up (h_k to the server) and down (its output back) while ranking
        try:
            with tqdm(total=n_users, desc="ranking users", unit="user", disable=not progress) as bar:
                for client, samples in samples_per_client.items():
                    sides = self.store.activate(client)
                    sides.link.stats.reset()
                    scores = self.score_samples(sides, samples, self.cfg.eval.batch_size)
                    boundary[0] += sides.link.stats.bytes_up
                    boundary[1] += sides.link.stats.bytes_down
                    targets = _flags_of([set(s.targets) for s in samples], row)
                    flags = _flags_of(masked[client], row)
                    values = per_user_metrics(scores, targets, flags, ks)
                    per_client[client] = {name: float(v.mean()) for name, v in values.items()}
                    per_user += [{"user": s.user, "client": client, **{n: float(values[n][u]) for n in PER_USER if n in values}}
                                 for u, s in enumerate(samples)]
                    if client in self.priors:  # the client's own counts alone: what the LLM adds is the rest
                        prior = self.priors[client].cpu().expand(len(samples), -1)
                        prior_clients[client] = {n: float(v.mean()) for n, v in
                                                 per_user_metrics(prior, targets, flags, ks).items()}
                    bar.update(len(samples))
        finally:
            if previous is not None:
                self.store.activate(previous)
        seconds = time.perf_counter() - start
        users = {c: len(s) for c, s in samples_per_client.items()}
        report = client_report(per_client, users)
        report.update(popularity_report(self.data, samples_per_client, masked, ks))
        if prior_clients:
            report["client_popularity"] = client_report(prior_clients, users)["overall"]
        report["per_user"] = per_user
        report["speed"] = {"users": n_users, "seconds": seconds, "users_per_second": n_users / seconds,
                           "item_embedding_seconds": self.index.build_seconds,
                           "item_index_cached": self.index.from_cache,
                           "boundary_bytes_up": boundary[0], "boundary_bytes_down": boundary[1]}
        report.update(protocol=mask, objective=self.name)
        return report

    def recommend(self, client: int, history_titles: list[str], top_k: int = 10) -> list[tuple[str, float]]:
        """`client`'s top `top_k` (title, score) for a typed history, best first (higher is better); items carrying a
        history title are never recommended, and a title shared by several items is listed once."""
        from fellrec.evaluation.recommend import resolve_titles

        if top_k < 1:
            raise FellrecError(f"top_k must be at least 1, got {top_k}")
        history = resolve_titles(self.index, history_titles)
        item_of = {}
        for item, title in zip(self.items, self.index.titles):
            item_of.setdefault(title, item)
        previous = self.store.active
        try:
            sides = self.store.activate(client)
            scores = self.score_samples(sides, [Sample("typed", tuple(item_of[t] for t in history), ())], 1)[0]
        finally:
            if previous is not None:
                self.store.activate(previous)
        seen, out = set(history), []
        for row in torch.argsort(scores, descending=True, stable=True).tolist():
            title = self.index.titles[row]
            if title not in seen:
                seen.add(title)
                out.append((title, float(scores[row])))
                if len(out) == top_k:
                    break
        return out


def _flags_of(item_sets: list[set[str]], row: dict[str, int]) -> torch.Tensor:
    """Users x items booleans: True where the item is in the user's set."""
    flags = torch.zeros(len(item_sets), len(row), dtype=torch.bool)
    for u, items in enumerate(item_sets):
        flags[u, [row[i] for i in items if i in row]] = True
    return flags
