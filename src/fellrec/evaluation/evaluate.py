"""Per-client evaluation: each client's adapter writes titles for its users, grounding ranks the real items, the
metrics are reported per client, overall (weighted by test users) and as balance figures across clients, next to
the popularity floor on the same users."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from fellrec.data.prompts import PromptStyle
from fellrec.data.table import RecData, Sample
from fellrec.errors import FellrecError
from fellrec.evaluation.grounding import (POP_GAMMAS, ItemIndex, TitleTrie, choose_pop_gamma, embed_texts,
                                          generate_titles, ground, title_trie)
from fellrec.evaluation.metrics import DEFAULT_KS, balance, mean_metrics, weighted_overall
from fellrec.evaluation.popularity import PopularityRanker


def client_samples(partition, samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    """The samples of each client that has any, by client id."""
    return {c: s for c, s in enumerate(partition.split_samples(list(samples))) if s}


MASKS = ("prompt", "history")


def masked_items(data: RecData, samples_per_client: dict[int, list[Sample]],
                 mask: str = "prompt") -> dict[int, list[set[str]]]:
    """Per client, the items each user must not be recommended: the prompt's items, or (`history`) also every other
    item of the user's training interactions and validation targets. A sample's own targets are never masked, so the
    same rule serves validation users (whose validation target is the answer) and test users."""
    if mask not in MASKS:
        raise FellrecError(f"unknown eval.mask {mask!r}: use one of {', '.join(MASKS)}")
    seen: dict[str, set[str]] = {}
    if mask == "history":
        for user, item in data.train_pairs:
            seen.setdefault(user, set()).add(item)
        for s in data.valid:
            seen.setdefault(s.user, set()).update(s.targets)
    return {c: [(seen.get(s.user, set()) | set(s.history)) - set(s.targets) for s in samples]
            for c, samples in samples_per_client.items()}


def predict_embeddings(model, store, tokenizer, titles: dict[str, str], samples_per_client: dict[int, list[Sample]],
                       style: PromptStyle, num_beams: int = 4, max_new_tokens: int = 24, batch_size: int = 8,
                       trie: Optional[TitleTrie] = None, progress=None
                       ) -> dict[int, tuple[list[str], torch.Tensor, tuple[int, int]]]:
    """Per client: the titles its own adapter writes for its users, their base-model embeddings, and the bytes that
    crossed its split's boundary (up, down) while it generated and embedded them."""
    max_prompt = model.model_args.max_length - max_new_tokens if hasattr(model, "model_args") else None
    out, previous = {}, store.active
    try:
        for client, samples in samples_per_client.items():
            link = store.activate(client).link
            link.stats.reset()
            prompts = [style.prompt([titles[i] for i in s.history]) for s in samples]
            generated = generate_titles(model, tokenizer, prompts, num_beams, max_new_tokens, batch_size, progress,
                                        trie, max_prompt, client)
            embeddings = embed_texts(model, tokenizer, generated, client=client)
            out[client] = (generated, embeddings, (link.stats.bytes_up, link.stats.bytes_down))
    finally:
        if previous is not None:  # evaluation leaves the live adapter as it found it
            store.activate(previous)
    return out


def evaluate_clients(model, store, tokenizer, data: RecData, partition=None,
                     samples_per_client: Optional[dict[int, list[Sample]]] = None, style: PromptStyle = PromptStyle(),
                     ks: Sequence[int] = DEFAULT_KS, num_beams: int = 4, max_new_tokens: int = 24,
                     item_index: Optional[ItemIndex] = None, pop_gamma: float = 0.0, grounding: str = "l2",
                     batch_size: int = 16, progress: bool = True, keep_predictions: bool = False,
                     mask: str = "prompt", collaborative: Optional[dict] = None) -> dict:
    """Metrics of every client's own adapter on its users (default: its test users under `partition`).

    Returns {overall, clients, balance, popularity, popularity_clients, speed, ...}; metric dicts are keyed by
    name (`ndcg@10`). Clients without users are listed in `skipped_clients`, not scored. `mask` (see
    `masked_items`) applies to the model and to popularity alike, and is reported as `protocol`.
    """
    if samples_per_client is None:
        if partition is None:
            raise FellrecError("evaluate_clients needs samples_per_client or a partition of the test users")
        samples_per_client = client_samples(partition, data.test)
    samples_per_client = {c: s for c, s in sorted(samples_per_client.items()) if s}
    if not samples_per_client:
        raise FellrecError("no client has a user to evaluate")
    if item_index is None:
        item_index = ItemIndex.build(model, tokenizer, data.titles)
    popularity = item_index.popularity(data.train_pairs) if pop_gamma and not collaborative else None
    masked = masked_items(data, samples_per_client, mask)  # before the generation: a bad mask costs nothing
    n_users = sum(len(s) for s in samples_per_client.values())
    start = time.perf_counter()
    with tqdm(total=n_users, desc="evaluating users", unit="user", disable=not progress) as bar:
        predicted = predict_embeddings(model, store, tokenizer, data.titles, samples_per_client, style, num_beams,
                                       max_new_tokens, batch_size, title_trie(tokenizer, item_index, grounding), bar)
    per_client, rankings = {}, {}
    for client, samples in samples_per_client.items():
        prior = (collaborative_prior(collaborative, client, samples, len(item_index.items)) if collaborative
                 else popularity)
        rankings[client] = ground(predicted[client][1], item_index, masked[client], max(ks), prior, pop_gamma)
        per_client[client] = mean_metrics(rankings[client], [set(s.targets) for s in samples], ks)
    seconds = time.perf_counter() - start
    users = {c: len(s) for c, s in samples_per_client.items()}
    report = client_report(per_client, users)
    report.update(popularity_report(data, samples_per_client, masked, ks))
    report["speed"] = {"users": n_users, "seconds": seconds, "users_per_second": n_users / seconds,
                       "item_embedding_seconds": item_index.build_seconds, "item_index_cached": item_index.from_cache,
                       "boundary_bytes_up": sum(p[2][0] for p in predicted.values()),
                       "boundary_bytes_down": sum(p[2][1] for p in predicted.values())}
    report.update(protocol=mask, pop_gamma=pop_gamma, grounding=grounding, num_beams=num_beams,
                  grounding_prior="sasrec" if collaborative else "popularity" if pop_gamma else None,
                  skipped_clients=sorted(set(range(partition.num_clients)) - set(users)) if partition else [])
    if keep_predictions:
        report["predictions"] = {c: {"generated": predicted[c][0], "ranked": rankings[c]} for c in rankings}
    return report


def client_report(per_client: dict[int, dict[str, float]], users: dict[int, int]) -> dict:
    names = next(iter(per_client.values())).keys()
    return {
        "overall": weighted_overall(per_client, users),
        "clients": [{"client": c, "users": users[c], **per_client[c]} for c in per_client],
        "balance": {name: balance({c: per_client[c][name] for c in per_client}) for name in names},
    }


def popularity_report(data: RecData, samples_per_client: dict[int, list[Sample]],
                       masked: dict[int, list[set[str]]], ks: Sequence[int]) -> dict:
    """The popularity ranker on exactly the same users and mask: the floor an LLM recommender has to beat."""
    ranker = PopularityRanker(data.train_pairs)
    per_client = {c: mean_metrics([ranker.recommend(m, max(ks)) for m in masked[c]], [set(x.targets) for x in s], ks)
                  for c, s in samples_per_client.items()}
    users = {c: len(s) for c, s in samples_per_client.items()}
    return {"popularity": weighted_overall(per_client, users),
            "popularity_clients": [{"client": c, "users": users[c], **per_client[c]} for c in per_client]}


def tune_pop_gamma(model, store, tokenizer, data: RecData, partition, style: PromptStyle, item_index: ItemIndex,
                   grid: Sequence[float] = POP_GAMMAS, num_beams: int = 4, max_new_tokens: int = 24,
                   grounding: str = "l2", batch_size: int = 16, progress: bool = True,
                   collaborative: Optional[dict] = None) -> tuple[float, dict]:
    """BIGRec's popularity exponent, chosen by NDCG@10 on the validation users (each with its client's adapter):
    (best gamma, {gamma: NDCG@10}). Pass the gamma to `evaluate_clients(pop_gamma=...)`. With `collaborative`
    (client -> its SASRec), the exponent of the collaborative term instead."""
    per_client = client_samples(partition, data.valid)
    if not per_client:
        raise FellrecError("choosing pop_gamma needs validation users; the data has none")
    n_users = sum(len(s) for s in per_client.values())
    with tqdm(total=n_users, desc="tuning pop_gamma", unit="user", disable=not progress) as bar:
        predicted = predict_embeddings(model, store, tokenizer, data.titles, per_client, style, num_beams,
                                       max_new_tokens, batch_size, title_trie(tokenizer, item_index, grounding), bar)
    samples = [s for c in per_client for s in per_client[c]]
    embeddings = torch.cat([predicted[c][1] for c in per_client])
    prior = (torch.cat([collaborative_prior(collaborative, c, s, len(item_index.items)) for c, s in per_client.items()])
             if collaborative else item_index.popularity(data.train_pairs))
    return choose_pop_gamma(embeddings, item_index, samples, prior, grid)


def collaborative_prior(collaborative: dict, client: int, samples: Sequence[Sample], n_items: int) -> torch.Tensor:
    """Users x items: `client`'s own SASRec scores after each user's history (columns in the item index's order).
    A client without a SASRec (no training windows) gets a constant prior: its users are ranked by distance."""
    if client not in collaborative:
        return torch.zeros(len(samples), n_items)
    return collaborative[client].score([s.history for s in samples])
