"""Federated rounds driven by Lightning Fabric (METHOD.md §3).

Each round: sample clients, train each sampled client locally through its split model (optionally clipping and
noising its update), gather the adapters on every rank, aggregate with the strategy (one frozen snapshot: Jacobi
order), validate every client (loss, and ranking metrics when asked), keep each client's best adapter, log,
checkpoint. After the last round the best adapters are evaluated on the test users. Clients are spread over
Fabric's processes; every rank holds the same adapters after each round, and each client trains with its own (round,
client) seed, so the result does not depend on the number of processes.

This module is the round loop; the per-round and final evaluation live in `validation`, what the run keeps on disk
(best adapters, round checkpoints) in `records`, the log rows in `fellrec.reporting`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from fellrec.config import (DataArgs, EvalArgs, FedArgs, LogArgs, ModelArgs, PartitionArgs, PrivacyArgs, SplitArgs,
                            TrainArgs)
from fellrec.errors import FellrecError
from fellrec.federation.checkpoint import restore_rng
from fellrec.federation.clients import build_client_data, client_users
from fellrec.federation.local import LocalResult, proximal_term, round_seed, train_client
from fellrec.federation.protection import protect_update, update_norm
from fellrec.federation.records import Tracker, load_checkpoint, save_best, save_checkpoint
from fellrec.federation.validation import Validation, lazy_item_index


@dataclass
class RunConfig:
    """Everything `fellrec fit` needs (the sections of the YAML config)."""

    name: str
    out_dir: str
    data: DataArgs
    partition: PartitionArgs
    model: ModelArgs
    split: SplitArgs
    fed: FedArgs
    train: TrainArgs
    log: LogArgs
    eval: EvalArgs = field(default_factory=EvalArgs)
    privacy: PrivacyArgs = field(default_factory=PrivacyArgs)
    keep_checkpoints: int = 3


class Federation:
    """Holds one base model, every client's adapters and data, and runs the rounds."""

    def __init__(self, cfg: RunConfig, fabric, run_dir: Path):
        from fellrec.data.partition import partition_users
        from fellrec.data.pipeline import load_data
        from fellrec.federation.strategies import build_strategy
        from fellrec.model.adapters import AdapterStore
        from fellrec.model.loading import load_tokenizer
        from fellrec.model.split import SplitModel
        from fellrec.objectives import build_objective

        self.cfg, self.fabric, self.run_dir = cfg, fabric, run_dir
        self.data = load_data(cfg.data)
        self.partition = partition_users(self.data, cfg.partition)
        self.tokenizer = load_tokenizer(cfg.model)
        torch.manual_seed(cfg.train.seed)  # the same LoRA initialisation on every rank and in every run
        self.model = SplitModel(cfg.model, cfg.split, device=fabric.device, lr=cfg.train.lr)
        self.item_index = lazy_item_index(self.model, self.tokenizer, self.data.titles, self.is_main)
        # Before the store: the score objective adds its head's tensors to what the store holds per client.
        self.objective = build_objective(cfg, self.model, self.tokenizer, self.data, self.item_index, self.autocast)
        self.store = self.objective.store = AdapterStore(self.model)
        self.strategy = build_strategy(cfg.fed.strategy, **strategy_options(cfg.fed))
        centralized = cfg.fed.strategy == "centralized"
        self.clients = build_client_data(self.data, self.partition, self.objective, cfg.train, centralized)
        self.ids = sorted(self.clients)
        for c in self.ids:
            self.store.state(c)  # every client starts from the same initial adapter
        self.strategy.set_initial(self.store.state(self.ids[0]))  # rebuilt from the seed on resume too
        self.objective.init_clients(self.store, client_users(self.data, self.partition, centralized))
        self.trainable = [c for c in self.ids if self.clients[c].train]
        for c in sorted(set(self.ids) - set(self.trainable)):
            if cfg.fed.strategy != "centralized":
                self.warn(f"client {c} has no training data: it is skipped in every round")
        if not self.trainable:
            raise FellrecError("no client has training data")
        self.validation = Validation(cfg, self.objective, self.store, self.clients, self.data, self.partition,
                                     fabric.device, self.autocast)
        self.tracker = Tracker()
        self.optimizer_states: dict[int, dict] = {}
        self.start_round = 0
        self.round_log = None  # a RoundLog on rank 0, set by the caller

    # ----- helpers ------------------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    def warn(self, message: str) -> None:
        if self.is_main:
            tqdm.write(f"warning: {message}", file=sys.stderr)

    def mine(self, clients: list[int]) -> list[int]:
        """The clients this rank handles."""
        return clients[self.fabric.global_rank::self.fabric.world_size]

    def gather(self, local: dict) -> dict:
        """Merge every rank's dict (client -> result); tensors travel on the CPU."""
        if self.fabric.world_size == 1:
            return local
        parts: list = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(parts, local)
        merged = {}
        for part in parts:
            merged.update(part)
        return merged

    def sample_clients(self, round_idx: int) -> list[int]:
        """The round's participants, drawn from a (seed, round) generator: the same on every rank."""
        n = max(1, round(self.cfg.fed.sample_fraction * len(self.trainable)))
        if n >= len(self.trainable):
            return list(self.trainable)
        rng = np.random.default_rng(round_seed(self.cfg.train.seed, round_idx, 10**6))
        return sorted(int(c) for c in rng.choice(self.trainable, size=n, replace=False))

    def autocast(self):
        return self.fabric.autocast()

    # ----- one round ----------------------------------------------------------------------------------------------
    def train_one(self, client: int, round_idx: int, progress) -> tuple[LocalResult, dict, Optional[float]]:
        sides = self.store.activate(client)
        params = list(self.store.live.values())
        groups = self.objective.param_groups(self.store.live, self.cfg.train)
        start = {n: t.clone() for n, t in self.store.state(client).items()}
        proximal = (proximal_term(self.strategy, sides, self.store.live, start) if self.cfg.fed.strategy == "fedprox"
                    else None)
        result, opt_state = train_client(
            sides, self.objective, groups, self.clients[client].train, self.cfg.train, round_idx, client,
            self.fabric.device, self.autocast, proximal,
            self.optimizer_states.get(client), progress)
        val = None
        if not result.diverged and not all(torch.isfinite(p).all() for p in params):
            result.diverged = True  # finite losses, but the step itself blew the adapter up
        if not result.diverged:
            self.store.capture(client)
            result.update_norm = update_norm(start, self.store.state(client))
            privacy, seed = self.cfg.privacy, round_seed(self.cfg.train.seed, round_idx, client)
            uploaded = protect_update(start, self.store.state(client), privacy.clip_norm, privacy.noise_multiplier,
                                      seed)
            self.store.set_state(client, uploaded)
            val = self.validation.signal(client)
        state = {n: t.cpu() for n, t in self.store.state(client).items()} if not result.diverged else {}
        if result.diverged:
            self.store.set_state(client, start)  # discard: the client keeps its adapter from before the round
        return result, {"state": state, "optimizer": _cpu(opt_state)}, val

    def run_round(self, round_idx: int, bars) -> bool:
        """One communication round; returns True when early stopping says stop."""
        started = time.perf_counter()
        sampled = self.sample_clients(round_idx)
        steps = sum(math.ceil(len(self.clients[c].train) / self.cfg.train.batch_size) for c in self.mine(sampled))
        bars.start_round(round_idx, len(self.mine(sampled)), steps * self.cfg.train.local_epochs)
        # What each client held when the round began (FELLRec's `update` similarity compares the uploaded changes).
        # No copy needed: the store replaces a client's tensors, it never writes into them.
        start = {c: self.store.state(c) for c in sampled}
        local = {}
        for client in self.mine(sampled):
            t0 = time.perf_counter()
            result, payload, val = self.train_one(client, round_idx, bars.steps)
            local[client] = (result, payload, val, time.perf_counter() - t0)
            bars.clients.update(1)
        results = self.gather(local)
        ok = [c for c in sampled if not results[c][0].diverged]
        for c in sampled:
            result, payload, _, _ = results[c]
            if result.diverged:
                self.warn(f"round {round_idx}: client {c} met a NaN/inf loss; its update is discarded")
                continue
            self.store.set_state(c, payload["state"])
            if self.cfg.train.keep_optimizer_state:
                self.optimizer_states[c] = payload["optimizer"]
        weights = None
        if ok:
            weights = self.aggregate(round_idx, ok, results, start)
        val = self.gather({c: self.validation.loss(c) for c in self.mine(self.ids)})
        ranking = {}
        if self.validation.round_eval is not None:  # eval.per_round, or a ranking signal
            ranking = self.gather({c: self.validation.ranking(c) for c in self.mine(self.ids)})
        improved, mean = self.tracker.update(round_idx, val, {c: len(self.clients[c].valid) for c in self.ids})
        stop = (round_idx + 1 >= self.cfg.fed.min_rounds
                and self.tracker.rounds_without_gain >= self.cfg.fed.patience)
        if self.is_main:
            save_best(self.run_dir, self.store, improved, self.tracker)
            self.log(round_idx, sampled, results, val, ranking, weights, ok, mean, time.perf_counter() - started,
                     stop)
            self.checkpoint(round_idx)
        self.fabric.barrier()
        return stop

    def aggregate(self, round_idx: int, participants: list[int], results: dict,
                  start_states: dict) -> Optional[list[list[float]]]:
        signals = {c: results[c][0].train_loss for c in participants}
        if self.cfg.fed.signal == "val_loss" or self.validation.ranking_signal:
            signals = {c: results[c][2] for c in participants}
        states = {c: self.store.state(c) for c in self.ids}
        num_samples = {c: len(self.clients[c].train) for c in participants}
        new = self.strategy.aggregate_round(states, num_samples, signals, round_idx, participants,
                                            start_states=start_states)
        for c in self.ids:
            self.store.set_state(c, new[c])
        matrix = getattr(self.strategy, "last_weights", None)
        return matrix.tolist() if matrix is not None else None

    # ----- outputs --------------------------------------------------------------------------------------------------
    def log(self, round_idx, sampled, results, val, ranking, weights, ok, mean, seconds, stop) -> None:
        from fellrec.reporting.round_rows import client_rows, console_line, round_summary

        rows = client_rows(round_idx, self.ids, sampled, ok, results, val, ranking,
                           {c: len(self.clients[c].train) for c in self.ids},
                           {c: _nbytes(self.store.client_state(c)) for c in ok},
                           getattr(self.strategy, "last_gammas", {}) or {})
        similarity = self.strategy.last_similarity if ok else None
        self.round_log.log_round(round_idx, rows, round_summary(round_idx, mean, self.tracker.best_mean, seconds,
                                                                stop, ranking),
                                 weights, sorted(ok), similarity.tolist() if similarity is not None else None)
        tqdm.write(console_line(round_idx, mean, rows), file=sys.stderr)

    def evaluate_best(self) -> dict:
        return self.validation.evaluate_best(self.run_dir, self.tracker.best_round)

    def checkpoint(self, round_idx: int) -> None:
        state = {"strategy": self.strategy.state_dict(), "tracker": asdict(self.tracker),
                 "optimizer_states": self.optimizer_states}
        save_checkpoint(self.run_dir, round_idx, self.store, self.ids, state, self.cfg.keep_checkpoints)

    def resume(self) -> None:
        state = load_checkpoint(self.run_dir, self.store, self.ids)
        self.strategy.load_state_dict(state["strategy"])
        self.tracker = Tracker(**state["tracker"])
        self.optimizer_states = state["optimizer_states"]
        restore_rng(state["rng"])
        self.start_round = state["round"] + 1
        if self.is_main:
            tqdm.write(f"resuming {self.run_dir} after round {state['round']}", file=sys.stderr)


def strategy_options(fed: FedArgs) -> dict:
    """The options of `fed.strategy` from the fed section (each strategy takes only its own)."""
    if fed.strategy == "fedprox":
        return {"mu": fed.mu}
    if fed.strategy == "fellrec":
        return {"similarity_weighting": fed.similarity_weighting, "tau": fed.tau, "heating": fed.heating,
                "dynamic": fed.dynamic, "alpha": fed.alpha, "beta": fed.beta, "temperature": fed.temperature,
                "signal": fed.signal, "similarity_on": fed.similarity_on,
                "similarity_centred": fed.similarity_centred}
    return {}


def _nbytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj
