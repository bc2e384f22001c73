"""Each client's own data, tokenised once: training samples and a fixed validation sample."""

from __future__ import annotations

from dataclasses import dataclass

from fellrec.config import DataArgs, ModelArgs, TrainArgs
from fellrec.data.collate import Encoded, encode
from fellrec.data.partition import Partition
from fellrec.data.pipeline import sample_subset
from fellrec.data.prompts import PromptStyle, render
from fellrec.data.table import RecData, Sample


@dataclass
class ClientData:
    client: int
    train: list[Encoded]
    valid: list[Encoded]
    truncated: int
    """Training samples that lost the start of their prompt to model.max_length."""


def encode_samples(samples: list[Sample], data: RecData, style: PromptStyle, tokenizer, max_length: int,
                   train_on_inputs: bool) -> list[Encoded]:
    return [encode(*render(s, data.titles, style), tokenizer, max_length, train_on_inputs) for s in samples]


def build_client_data(data: RecData, partition: Partition, tokenizer, data_args: DataArgs, model_args: ModelArgs,
                      train_args: TrainArgs, centralized: bool = False) -> dict[int, ClientData]:
    """Client id -> its data. `centralized` puts every training sample in client 0 (one client holding all data);
    validation stays per client, so the single model is still judged on every client's users."""
    style = PromptStyle(data_args.item_noun, data_args.item_verb)
    train_parts = partition.split_samples(data.train)
    valid_parts = partition.split_samples(data.valid)
    if centralized:
        train_parts = [data.train] + [[] for _ in train_parts[1:]]
    out = {}
    for client in range(partition.num_clients):
        valid = sample_subset(valid_parts[client], train_args.val_samples_per_client, train_args.seed * 1000 + client,
                              "train.val_samples_per_client")
        train = encode_samples(train_parts[client], data, style, tokenizer, model_args.max_length,
                               train_args.train_on_inputs)
        out[client] = ClientData(client, train,
                                 encode_samples(valid, data, style, tokenizer, model_args.max_length,
                                                train_args.train_on_inputs),
                                 sum(e.truncated for e in train))
    return out
