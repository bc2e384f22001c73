"""The allowed values of every numeric config key, checked right after parsing, before any work starts.

jsonargparse checks types and choices (`typing.Literal`) but not ranges: `--train.lr -1` or `--eval.num_beams 0`
would otherwise fail deep inside training (after a whole round) or, worse, run and produce nonsense. `RULES` is the
one table of ranges; `check_config` applies it to a parsed configuration and raises a `FellrecError` that names the
key and its range. A test walks every field of every config section and fails for a numeric field without a rule:
whoever adds one to config.py adds its rule here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

from fellrec.errors import FellrecError


@dataclass(frozen=True)
class Range:
    """Every number in a value (a list, tuple or dict: each number in it) lies in this interval; None passes, as
    Optional fields use it for "all" or "off"."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, number: float) -> bool:
        if not math.isfinite(number):
            return False
        above = self.low is None or (number > self.low if self.low_open else number >= self.low)
        below = self.high is None or (number < self.high if self.high_open else number <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_fmt(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}"
                f"{')' if self.high_open else ']'}")


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, low_open=True)  # (0, 1]

RULES: dict[str, Range] = {
    "data.core": AT_LEAST_ONE,
    "data.split_ratios": Range(0, 1),  # and they sum to 1: see CROSS_RULES
    "data.max_history": AT_LEAST_ONE,
    "data.train_samples": AT_LEAST_ONE,
    "data.valid_samples": AT_LEAST_ONE,
    "data.test_users": AT_LEAST_ONE,
    "data.seed": NON_NEGATIVE,  # numpy refuses negative seeds
    "partition.num_clients": AT_LEAST_ONE,
    "partition.seed": NON_NEGATIVE,
    "partition.mf_dim": AT_LEAST_ONE,
    "partition.mf_epochs": AT_LEAST_ONE,
    "partition.kmeans_iters": AT_LEAST_ONE,
    "partition.dirichlet_alpha": POSITIVE,
    "partition.popularity_buckets": AT_LEAST_ONE,
    "model.max_length": Range(2),  # room for at least one prompt token and EOS
    "model.lora_r": AT_LEAST_ONE,
    "model.lora_alpha": POSITIVE,
    "model.lora_dropout": Range(0, 1, high_open=True),
    "model.score_scale": POSITIVE,
    "split.head_layers": NON_NEGATIVE,  # k + m below the model's depth is checked when the model is split
    "split.tail_layers": NON_NEGATIVE,
    "split.per_client": NON_NEGATIVE,  # client ids and their (k, m)
    "split.boundary_noise": NON_NEGATIVE,
    "fed.rounds": AT_LEAST_ONE,
    "fed.sample_fraction": FRACTION,
    "fed.mu": NON_NEGATIVE,
    "fed.tau": POSITIVE,
    "fed.alpha": POSITIVE,
    "fed.beta": POSITIVE,
    "fed.temperature": POSITIVE,
    "fed.patience": AT_LEAST_ONE,
    "fed.min_rounds": NON_NEGATIVE,
    "train.local_epochs": AT_LEAST_ONE,
    "train.lr": POSITIVE,
    "train.item_lr": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.warmup_steps": NON_NEGATIVE,
    "train.batch_size": AT_LEAST_ONE,
    "train.micro_batch_size": AT_LEAST_ONE,  # and at most train.batch_size: see CROSS_RULES
    "train.max_grad_norm": NON_NEGATIVE,  # 0 disables clipping
    "train.val_samples_per_client": AT_LEAST_ONE,
    "train.devices": AT_LEAST_ONE,
    "train.seed": NON_NEGATIVE,
    "eval.num_beams": AT_LEAST_ONE,
    "eval.max_new_tokens": AT_LEAST_ONE,
    "eval.batch_size": AT_LEAST_ONE,
    "eval.users_per_client": AT_LEAST_ONE,
    "eval.seed": NON_NEGATIVE,
    "eval.val_users_per_client": AT_LEAST_ONE,
    "privacy.clip_norm": POSITIVE,
    "privacy.noise_multiplier": NON_NEGATIVE,
    # Options of single commands (checked when the command has them).
    "keep_checkpoints": AT_LEAST_ONE,  # fit
    "client": NON_NEGATIVE,  # recommend, data preview
    "top_k": AT_LEAST_ONE,  # recommend
    "n": NON_NEGATIVE,  # data preview
    "ks": NON_NEGATIVE,  # bench split
    "batch_size": AT_LEAST_ONE,  # bench split
    "seq_len": Range(2),  # bench split: one input and one target token
    "repeats": AT_LEAST_ONE,  # bench split
    "head_layers": NON_NEGATIVE,  # audit
    "victim_client": NON_NEGATIVE,  # audit
    "max_titles": AT_LEAST_ONE,  # audit
    "epochs": AT_LEAST_ONE,  # audit
    "seed": NON_NEGATIVE,  # audit
}


def _ratios_sum_to_one(get: Callable[[str], Any]) -> Optional[str]:
    ratios = get("data.split_ratios")
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        return f"data.split_ratios must sum to 1 (got {list(ratios)})"
    return None


def _micro_batch_within_batch(get: Callable[[str], Any]) -> Optional[str]:
    micro, batch = get("train.micro_batch_size"), get("train.batch_size")
    if micro > batch:  # micro-batches are cut from one batch: a larger one could never be filled
        return f"train.micro_batch_size must be <= train.batch_size (got {micro} > {batch})"
    return None


def _noise_needs_clipping(get: Callable[[str], Any]) -> Optional[str]:
    if get("privacy.noise_multiplier") > 0 and get("privacy.clip_norm") is None:  # the noise std is a multiple of it
        return "privacy.noise_multiplier > 0 needs privacy.clip_norm (got null)"
    return None


def _popularity_grounding_needs_generation(get: Callable[[str], Any]) -> Optional[str]:
    for key in ("eval.popularity_aware", "eval.collaborative_aware"):
        if get(key) and get("model.objective") == "score":  # the score head ranks items itself
            return f"{key} applies to model.objective generate only (got model.objective score)"
    return None


def _one_grounding_prior(get: Callable[[str], Any]) -> Optional[str]:
    if get("eval.popularity_aware") and get("eval.collaborative_aware"):  # one (1 + prior)^(-gamma) term
        return "eval.popularity_aware and eval.collaborative_aware cannot both be true: choose one"
    return None


def _int8_ranking_needs_dense_blocks(get: Callable[[str], Any]) -> Optional[str]:
    if get("eval.quantize") == "int8" and get("model.quantize") == "nf4":  # nf4 blocks hold no dense weight to swap
        return "eval.quantize int8 needs model.quantize none or int8 (got nf4)"
    return None


CROSS_RULES: list[Callable[[Callable[[str], Any]], Optional[str]]] = [
    _ratios_sum_to_one, _micro_batch_within_batch, _noise_needs_clipping, _popularity_grounding_needs_generation,
    _one_grounding_prior, _int8_ranking_needs_dense_blocks]
"""Rules over several keys; each returns a message naming the keys, or None. They run after every single-key rule
has passed, so each value is already in its own range."""


def check_config(cfg: Any) -> None:
    """Raise a FellrecError for the first value outside its range. `cfg` is a parsed Namespace, an object with one
    attribute per section (RunConfig), or a mapping section name -> dataclass; keys it lacks are skipped (command
    options other commands do not have)."""
    for key, rule in RULES.items():
        value = _lookup(cfg, key)
        if value is not _MISSING and not all(rule.holds(n) for n in _numbers(value)):
            raise FellrecError(f"{key} must {_what(value)} {rule.describe()} (got {value!r})")
    for rule in CROSS_RULES:
        message = rule(lambda key: _lookup(cfg, key))
        if message:
            raise FellrecError(message)


_MISSING = object()


def _lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        else:
            node = getattr(node, part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _numbers(value: Any) -> list[float]:
    """Every number in a value: itself, or those inside a list, tuple or dict (keys included); None holds none."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [n for pair in value.items() for item in pair for n in _numbers(item)]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    return [value]


def _what(value: Any) -> str:
    """How the message names the value: a container holds numbers; inf and nan pass no range."""
    finite = all(math.isfinite(n) for n in _numbers(value))
    noun = "finite numbers" if not finite else "numbers"
    if isinstance(value, (Mapping, list, tuple)):
        return f"hold {noun}"
    return "be" if finite else "be a finite number"


# ----- the fields of the config sections: which hold numbers, which a choice -----------------------------------------
def section_fields(sections: Mapping[str, type]) -> dict[str, Any]:
    """`section.key` -> the field's resolved type annotation, for every field of every section dataclass."""
    return {f"{name}.{f.name}": typing.get_type_hints(cls)[f.name]
            for name, cls in sections.items() for f in dataclasses.fields(cls)}


def holds_numbers(annotation: Any) -> bool:
    """True for int and float (bool excluded) and for any Optional, list, tuple or dict with them inside."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is Literal:
        return False
    return any(holds_numbers(arg) for arg in typing.get_args(annotation))


def choices(annotation: Any) -> Optional[tuple]:
    """The allowed values of a Literal (or Optional[Literal]) field, None for other fields."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is Union:
        inner = [choices(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return (*inner[0], None) if len(inner) == 1 and inner[0] else None
    return None


# ----- jsonargparse's complaints as one line ----------------------------------------------------------------------
_PARSER_KEY = re.compile(r'Parser key "([\w.]+)"')
_GIVEN = re.compile(r"(?:Got|Given) value: (.*)$", re.MULTILINE)


def parse_error_message(message: str, sections: Mapping[str, type]) -> str:
    """jsonargparse's (often multi-line) parse error as one line that names the key and what it accepts."""
    key, given = _PARSER_KEY.search(message), _GIVEN.findall(message)
    annotation = section_fields(sections).get(key.group(1)) if key else None
    if annotation is None or not given:
        return " ".join(message.split())
    return f"{key.group(1)} must be {_accepted(annotation)} (got {given[-1].strip()!r})"


def _accepted(annotation: Any) -> str:
    allowed = choices(annotation)
    if allowed:
        return "one of " + ", ".join("null" if c is None else str(c) for c in allowed)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    args = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    return " or ".join(names.get(arg, str(arg)) for arg in args)
