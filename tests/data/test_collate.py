"""Token batches: loss on the response only, left padding, truncation that keeps the response."""

from __future__ import annotations

import pytest

from fellrec.config import ModelArgs
from fellrec.data.collate import IGNORE_INDEX, collate, encode
from fellrec.data.prompts import PromptStyle
from fellrec.model.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelArgs(name="tiny-llama"))


def test_labels_cover_the_response_and_eos_only(tokenizer):
    prompt = PromptStyle().prompt(["Toy Story (1995)"])
    e = encode(prompt, '"Heat (1995)"', tokenizer, max_length=512)
    response_ids = tokenizer('"Heat (1995)"', add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert e.input_ids[-len(response_ids):] == response_ids
    assert e.labels == [IGNORE_INDEX] * (len(e.input_ids) - len(response_ids)) + response_ids
    assert tokenizer.decode(e.input_ids[: len(e.input_ids) - len(response_ids)]) == prompt
    assert not e.truncated


def test_train_on_inputs_labels_everything(tokenizer):
    e = encode("Some prompt", '"T"', tokenizer, max_length=64, train_on_inputs=True)
    assert e.labels == e.input_ids


def test_truncation_drops_the_prompt_start_and_keeps_the_response(tokenizer):
    prompt = PromptStyle().prompt([f"Movie {n}" for n in range(10)])
    e = encode(prompt, '"Last"', tokenizer, max_length=40)
    assert len(e.input_ids) == 40 and e.truncated
    assert tokenizer.decode(e.input_ids).endswith('### Response:\n"Last"' + tokenizer.eos_token)


def test_collate_pads_on_the_left(tokenizer):
    batch = collate([encode("a b c d e f", '"x"', tokenizer, 64), encode("a", '"x"', tokenizer, 64)],
                    pad_token_id=tokenizer.pad_token_id)
    short = int(batch["attention_mask"][1].sum())
    width = batch["input_ids"].shape[1]
    assert batch["attention_mask"][1].tolist() == [0] * (width - short) + [1] * short
    assert (batch["labels"][1, : width - short] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, : width - short] == tokenizer.pad_token_id).all()


def test_a_max_length_without_room_for_the_prompt_is_a_clear_error(tokenizer):
    from fellrec.errors import FellrecError

    with pytest.raises(FellrecError, match="model.max_length 3 leaves no room"):
        encode(PromptStyle().prompt(["Toy Story (1995)"]), '"Heat (1995)"', tokenizer, 3)
