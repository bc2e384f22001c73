"""Training and ranking speed: the configuration of eb43212 against conf/ml100k.yaml as it now stands, side by side.

The same ML-100K training windows for both arms, interleaved repeats, medians:
  baseline  generate (BIGRec prompt, titles with their years), the LM head over every position, fp32, micro-batches
            in shuffled order, batch 8 of micro-batches of 4 (the default run of eb43212);
  default   conf/ml100k.yaml: its objective, prompt, precision (auto), length grouping and batch sizes.
  int8      the default with `model.quantize: int8` server blocks (int8_samples_per_s, int8_score_eval_users_per_s);
  or dense  where the default ranks in int8 already (`eval.quantize` or `model.quantize`): the default with dense
            blocks throughout (dense_score_eval_users_per_s; dense_samples_per_s where the default trains in int8).
Each arm runs `train_client`, the real local-training loop (forward, backward, clipping, AdamW). Ranking speed:
users per second of the score objective (every item scored for every user; after one warm-up batch, median of the
repeats) and of generation plus grounding.

    python experiments/bench_train.py --json                # one JSON object on stdout
    python experiments/bench_train.py --model tiny-llama --samples 8 --repeats 1 --eval-users 4   # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from fellrec.config import DataArgs, EvalArgs, ModelArgs, SplitArgs, TrainArgs
from fellrec.data.pipeline import load_data
from fellrec.evaluation.checkpoint_eval import autocast_for
from fellrec.evaluation.evaluate import predict_embeddings
from fellrec.evaluation.grounding import ItemIndex, title_trie
from fellrec.federation.local import train_client
from fellrec.federation.precision import precision_for
from fellrec.model.adapters import AdapterStore
from fellrec.model.blocks import causal_lm_loss
from fellrec.model.loading import cache_root, load_tokenizer
from fellrec.model.split import SplitModel
from fellrec.objectives import GenerateObjective, ScoreObjective

REPO = Path(__file__).resolve().parents[1]


def read_config(path: Path, model: str) -> SimpleNamespace:
    """The sections of a run config file as dataclasses (unknown keys are an error, as in the CLI)."""
    raw = yaml.safe_load(path.read_text())
    sections = {"data": DataArgs, "model": ModelArgs, "split": SplitArgs, "train": TrainArgs, "eval": EvalArgs}
    cfg = SimpleNamespace(**{name: cls(**raw.get(name, {})) for name, cls in sections.items()})
    cfg.model = dataclasses.replace(cfg.model, name=model)
    return cfg


class EveryPositionGenerate(GenerateObjective):
    """The generative loss as eb43212 computed it: logits at every position, then the shifted cross-entropy."""

    def loss(self, sides, batch):
        return causal_lm_loss(sides.client(batch["input_ids"], batch["attention_mask"]), batch["labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "conf" / "ml100k.yaml"))
    parser.add_argument("--generative-config", default=str(REPO / "conf" / "ml100k-generative.yaml"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=32, help="training windows each arm trains on per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-users", type=int, default=64)
    parser.add_argument("--generate-users", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = read_config(Path(args.config), args.model)
    gen_cfg = read_config(Path(args.generative_config), args.model)
    base_data = dataclasses.replace(cfg.data, prompt="bigrec", title_years=True)
    base_cfg = SimpleNamespace(data=base_data, model=gen_cfg.model,
                               train=TrainArgs(lr=cfg.train.lr, batch_size=8, micro_batch_size=4,
                                               group_by_length=False, precision="32-true"),
                               eval=gen_cfg.eval)
    data = load_data(dataclasses.replace(cfg.data, train_samples=args.samples, test_users=args.eval_users))
    tokenizer = load_tokenizer(cfg.model)
    precision = precision_for(cfg.train, "cpu")
    arms, stores = {}, {}
    default_cls = ScoreObjective if cfg.model.objective == "score" else GenerateObjective
    cpu_autocast = autocast_for(cfg.train, torch.device("cpu"))
    candidates = [("baseline", base_cfg, EveryPositionGenerate, contextlib.nullcontext),
                  ("default", cfg, default_cls, cpu_autocast)]
    # The other CPU choice, measured beside the default: dense blocks throughout where the default ranks in int8
    # (`eval.quantize` or `model.quantize`), else int8 blocks.
    ranks_int8 = "int8" in (cfg.model.quantize, cfg.eval.quantize)
    other = "dense" if ranks_int8 else "int8"
    other_cfg = SimpleNamespace(**{**vars(cfg), "eval": dataclasses.replace(cfg.eval, quantize=None),
                                   "model": dataclasses.replace(cfg.model, quantize="none" if ranks_int8 else "int8")})
    candidates.append((other, other_cfg, default_cls, cpu_autocast))
    for name, arm_cfg, cls, autocast in candidates:
        torch.manual_seed(0)  # each arm its own model: their model.quantize may differ
        model = SplitModel(arm_cfg.model, cfg.split, device="cpu", lr=cfg.train.lr)
        index = ItemIndex.build(model, tokenizer, data.titles, cache_dir=cache_root() / "item-index")
        arms[name] = cls(arm_cfg, model, tokenizer, data, lambda index=index: index, autocast)
        stores[name] = arms[name].store = AdapterStore(model)
    # Training: the other arm only where its blocks train differently from the default's.
    seconds = {name: [] for name in arms if name != other or other_cfg.model.quantize != cfg.model.quantize}
    encoded = {name: arms[name].encode(data.train) for name in seconds}
    for repeat in range(args.repeats):  # interleaved: machine noise hits both arms alike
        for name in seconds:
            objective = arms[name]
            train, store = objective.cfg.train, stores[name]
            sides = store.activate(0)  # the initial adapter: every repeat trains the same step
            start = time.perf_counter()
            train_client(sides, objective, objective.param_groups(store.live, train), encoded[name], train, repeat,
                         0, objective.model.device, objective.autocast)
            seconds[name].append(time.perf_counter() - start)
    out = {f"{name}_samples_per_s": args.samples / statistics.median(s) for name, s in seconds.items()}
    out["speedup"] = out["default_samples_per_s"] / out["baseline_samples_per_s"]

    if isinstance(arms["default"], ScoreObjective):  # ranking: the default and the other arm interleaved, warmed up
        if cfg.eval.quantize == "int8":  # as `fit` ranks: dense blocks swapped to int8 after training
            arms["default"].model.rank_in_int8()
        ranked = {name: arms[name] for name in ("default", other)}
        for name, objective in ranked.items():
            objective.score_samples(stores[name].activate(0), data.test[:cfg.eval.batch_size], cfg.eval.batch_size)
        ranking = {name: [] for name in ranked}
        for _ in range(args.repeats):
            for name, objective in ranked.items():
                sides = stores[name].activate(0)
                start = time.perf_counter()
                objective.score_samples(sides, data.test, cfg.eval.batch_size)
                ranking[name].append(time.perf_counter() - start)
        for name, repeats in ranking.items():
            prefix = "" if name == "default" else f"{name}_"
            out[f"{prefix}score_eval_users_per_s"] = len(data.test) / statistics.median(repeats)
    generate, ev = arms["baseline"], gen_cfg.eval
    few = {0: data.test[:args.generate_users]}
    start = time.perf_counter()
    predict_embeddings(generate.model, stores["baseline"], tokenizer, data.titles, few, generate.style,
                       ev.num_beams, ev.max_new_tokens, ev.batch_size,
                       title_trie(tokenizer, generate.item_index_fn(), ev.grounding))
    out["generate_eval_users_per_s"] = len(few[0]) / (time.perf_counter() - start)
    out.update(model=args.model, objective=cfg.model.objective, precision=precision,
               default_quantize=cfg.model.quantize, baseline_quantize=base_cfg.model.quantize,
               samples=args.samples, repeats=args.repeats, ranked_users=len(data.test),
               baseline_mean_tokens=_mean_tokens(encoded["baseline"]),
               default_mean_tokens=_mean_tokens(encoded["default"]))
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}")


def _mean_tokens(encoded: list) -> float:
    return sum(len(e.input_ids) for e in encoded) / len(encoded)


if __name__ == "__main__":
    main()
