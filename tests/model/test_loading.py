"""Model and tokenizer loading: local directories, the packaged SmolLM2 cache, tiny test configs, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fellrec.config import ModelArgs
from fellrec.errors import FellrecError
from fellrec.model import loading
from fellrec import files
from fellrec.files import write_atomically
from fellrec.model.loading import cache_root, load_base_model, load_tokenizer


def test_missing_model_directory_is_one_clear_error(tmp_path):
    with pytest.raises(FellrecError, match="model directory not found") as err:
        load_base_model(ModelArgs(path=str(tmp_path / "nowhere")))
    assert err.value.path == str(tmp_path / "nowhere")


def test_unsupported_architecture_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(FellrecError, match="unsupported architecture model_type='gpt2'"):
        load_base_model(ModelArgs(path=str(tmp_path)))


def test_directory_without_config_and_broken_config(tmp_path):
    with pytest.raises(FellrecError, match="no config.json"):
        load_base_model(ModelArgs(path=str(tmp_path)))
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n oops}')
    with pytest.raises(FellrecError, match="not valid JSON") as err:
        load_base_model(ModelArgs(path=str(tmp_path)))
    assert err.value.line == 2


def test_unknown_model_name():
    with pytest.raises(FellrecError, match="unknown model name 'gpt-9'"):
        load_base_model(ModelArgs(name="gpt-9"))


@pytest.mark.parametrize("name, model_type", [("tiny-llama", "llama"), ("tiny-qwen2", "qwen2")])
def test_tiny_models_are_deterministic_and_small(name, model_type):
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    a, b = load_base_model(ModelArgs(name=name)), load_base_model(ModelArgs(name=name))
    assert torch.equal(torch.random.get_rng_state(), state)  # building one leaves the caller's RNG alone
    assert a.config.model_type == model_type and a.config.hidden_size == 64
    assert 2 <= a.config.num_hidden_layers <= 4 and a.config.vocab_size == 49152
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.lm_head.weight is a.model.embed_tokens.weight
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_local_directory_round_trip(tmp_path):
    """A saved tiny model loads back from its directory as a local Hugging Face model, in the asked dtype."""
    model = load_base_model(ModelArgs(name="tiny-qwen2"))
    model.save_pretrained(tmp_path)
    loaded = load_base_model(ModelArgs(path=str(tmp_path), compute_dtype="bfloat16"))
    assert loaded.config.model_type == "qwen2" and loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.model.layers[1].self_attn.q_proj.weight,
                       model.model.layers[1].self_attn.q_proj.weight.bfloat16())


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("FELLREC_CACHE")
    assert cache_root() == tmp_path / "x" / "fellrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "fellrec"


def test_interrupted_write_leaves_nothing_that_is_reused(tmp_path):
    target = tmp_path / "cache" / "model"

    def crash(tmp: Path):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, crash)
    assert not target.exists() and not list(target.parent.iterdir())  # the partial directory is gone too
    write_atomically(target, lambda tmp: (tmp / "config.json").write_text('{"ok": 1}'))
    assert json.loads((target / "config.json").read_text()) == {"ok": 1}
    assert target.stat().st_mode & 0o077 == 0o777 & ~files._umask() & 0o077  # not left private like mkdtemp
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_existing_cache_is_reused_without_converting(monkeypatch, tmp_path):
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("converted although cached"))
    assert loading.smollm2_dir() == tmp_path / "smollm2-135m-instruct"


def test_packaged_gguf_is_found():
    gguf = loading.packaged_gguf()
    assert gguf.name.endswith(".gguf") and gguf.stat().st_size > 50_000_000


@pytest.mark.parametrize("name", ["tiny-llama", "smollm2-135m"])
def test_tokenizer_pads_left_with_a_pad_token(name):
    tok = load_tokenizer(ModelArgs(name=name))
    assert tok.padding_side == "left" and tok.pad_token is not None and len(tok) == 49152
    enc = tok(["Toy Story (1995)", "Heat"], padding=True, return_tensors="pt")
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][1, -1] == 1  # left padding
    assert enc["input_ids"][1, 0] == tok.pad_token_id
