"""One-shot GPU check of fellrec: nf4 server blocks on CUDA, a real federated round, training and ranking speed.

Made for one run on a machine with a GPU but without the model weights, the ML-100K data, bitsandbytes or
jsonargparse installed: those pure-python packages and the SmolLM2 tokenizer travel in `.gpu_site/` (see its
README), put first on PYTHONPATH. Nothing is downloaded.

Sections (each one's failure is recorded in the JSON as its error, and the script goes on to the next):
  env          torch / CUDA device / bitsandbytes (version, backend, native library) / transformers / peft versions.
               Then, on a transformers older than 5.24 (5.17: its mask builders and decoder layers take
               `past_key_values=`, fellrec passes `cache=`), install_transformers_shim() forwards `cache=` as
               `past_key_values=` in this process and in the fit subprocess (listed under transformers_compat_shim;
               --no-compat-shim turns it off). src/ is not changed.
  model        the SmolLM2-135M architecture (LlamaConfig: hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate
               1536, vocab 49152, tied embeddings, rope theta 1e5; the values of the packaged SmolLM2-135M-Instruct
               config) with RANDOM weights (seed 0), saved with the SmolLM2 tokenizer into a temporary local model
               directory. Everything below loads it as `model.path`, fellrec's real loading path (load_base_model,
               load_tokenizer). `--model tiny-llama`: fellrec's tiny test config instead (CPU smoke test).
  data         a synthetic interaction set (users x items, made-up titles, two taste groups) written as fellrec's
               `csv` source (interactions.csv, items.csv) and read by fellrec's data stage (leave-one-out, compact
               prompts).
  nf4          SplitModel with model.quantize nf4 (quantize_blocks -> bitsandbytes Linear4bit on the device, peft
               LoRA on top) next to the same weights with quantize none: the server blocks' Linear4bit weights
               (device, dtype, quant type), their bytes in nf4 / bf16 / fp32, the relative error of the final hidden
               states nf4 vs dense (fp32 compute, no autocast), and a backward of the split LM loss under the
               training autocast: server LoRA tensors with a non-zero gradient at initialisation (B = 0, so only the
               B matrices can have one) and again after one AdamW step (all of them should).
  fl_round     `python -m fellrec fit` (the real CLI: jsonargparse, Fabric, the orchestrator, FELLRec aggregation,
               validation, checkpoints, final ranking evaluation) in a subprocess on the synthetic data: 3 k-means
               clients (with 2, the centred cosines of conf/ml100k.yaml are -1 by construction and the FELLRec
               weights the identity), nf4, conf/ml100k.yaml otherwise, `--fl-rounds` rounds, W&B disabled, bf16
               autocast on a GPU (train.precision auto). Reports the wall time,
               the rounds' seconds, the aggregation weights and the results; copies the run's CSV/JSON files to
               $OUT/fl_run/. (The full orchestrator runs, so no hand-made aggregation is needed.)
  train_speed  train_client (the real local loop: ScoreObjective, forward/backward through the split and link, per-side
               AdamW, clipping) on the same encoded windows for quantize nf4 and quantize none side by side,
               interleaved repeats, medians: samples/s per micro batch (batch = micro batch, no accumulation),
               both arms with model.compute_dtype float32 (the project default; --compute-dtype) under bf16
               autocast on a GPU, so the dense arm stores fp32 weights and computes in bf16,
               nf4/dense ratio, peak GPU memory. Both arms stay resident, so each setting reports the peak above the
               memory allocated before its call, the arm's own resident bytes and their sum (its footprint alone).
  ranking      ScoreObjective.score_samples (every item scored for every test user) per eval batch size, both arms.

`.gpu_site/` (git-ignored; add `/.gpu_site/` to .git/info/exclude) is made from this machine's .venv: copy into it the
packages bitsandbytes (of its .so files only libbitsandbytes_cpu.so and the one of the GPU machine's CUDA, e.g.
libbitsandbytes_cuda130.so), jsonargparse, docstring_parser, typeshed_client and gguf with their dist-info folders,
and the SmolLM2 tokenizer files (TOKENIZER_FILES, from fellrec's model cache) into .gpu_site/smollm2-tokenizer/;
about 15 MiB. Results of the H200 run: experiments/results/gpu/gpu_check_h200.json.

A JSON object goes to stdout at the end (the last line) and, after every section, to $OUT/gpu_check.json when OUT is
set. Progress lines start with `[gpu_check]`.

    PYTHONPATH=.gpu_site:src python3 experiments/gpu_check.py                   # the GPU run (defaults sized for an H200)
    PYTHONPATH=.gpu_site:src python3 experiments/gpu_check.py --device cpu --model tiny-llama --users 60 --items 80 \
        --train-samples 8 --micro-batches 4,8 --eval-batches 8,32 --repeats 1 --fl-rounds 1 --fl-train-samples 24 \
        --fl-test-users 12 --check-batch 2 --check-seq 16                    # CPU smoke test (about 1.5 min)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]

# SmolLM2-135M-Instruct's config.json (the one fellrec converts from the packaged GGUF), minus bookkeeping keys.
SMOLLM2_135M = dict(
    architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
    pad_token_id=2, unk_token_id=0, head_dim=64, hidden_act="silu", hidden_size=576, initializer_range=0.02,
    intermediate_size=1536, max_position_embeddings=8192, mlp_bias=False, num_attention_heads=9,
    num_hidden_layers=30, num_key_value_heads=3, pretraining_tp=1, rms_norm_eps=9.999999747378752e-06,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True, use_cache=True,
    vocab_size=49152)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

_ADJ = ("Silent", "Crimson", "Lost", "Golden", "Broken", "Hidden", "Last", "Wild", "Frozen", "Dark", "Bright",
        "Secret", "Endless", "Burning", "Quiet", "Little", "Electric", "Midnight", "Forgotten", "Savage", "Gentle",
        "Iron", "Paper", "Glass", "Hollow", "Distant", "Restless", "Shallow", "Falling", "Northern", "Velvet",
        "Lonely", "Brave", "Strange", "Sweet", "Cold", "Open", "Bitter", "Sacred", "Rising")
_NOUN = ("River", "City", "Heart", "Road", "Garden", "Storm", "Mirror", "Island", "Kingdom", "Night", "Summer",
         "Stranger", "Machine", "Harbor", "Train", "Letter", "Empire", "Forest", "Dream", "Witness", "Horizon",
         "Detective", "Circus", "Valley", "Shadow", "Promise", "Engine", "Season", "Bridge", "Voyage", "Secret",
         "Mountain", "Hotel", "Signal", "Frontier", "Ghost", "Planet", "Sister", "Orchard", "Tide")


# ----- bookkeeping ------------------------------------------------------------------------------------------------
class Report:
    """The JSON result: one entry per section ({ok, seconds, ...} or {ok: false, error, traceback}), saved to
    $OUT/gpu_check.json after every section so a cut-off run still leaves what it had."""

    def __init__(self, args):
        self.started = time.perf_counter()
        self.data = {"script": "experiments/gpu_check.py", "args": vars(args), "sections": {}}
        self.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        self.deadline = self.started + args.budget_s
        self.hard_stop = self.started + args.hard_stop_s

    @contextlib.contextmanager
    def section(self, name: str):
        entry: dict = {}
        self.data["sections"][name] = entry
        if time.perf_counter() > self.deadline:
            entry.update(ok=False, skipped=f"time budget --budget-s exhausted before {name}")
            log(f"{name}: skipped (time budget)")
            self.save()
            yield None
            return
        log(f"{name}: start")
        t0 = time.perf_counter()
        try:
            yield entry
            entry["ok"] = True
        except Exception as error:  # one failing section must not end the one-shot run
            entry.update(ok=False, error=f"{type(error).__name__}: {error}"[:2000],
                         traceback=traceback.format_exc()[-1500:])
            log(f"{name}: FAILED {type(error).__name__}: {str(error)[:300]}")
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        log(f"{name}: done in {entry['seconds']:.1f} s (ok={entry['ok']})")
        self.save()

    def ok(self, name: str) -> bool:
        return bool(self.data["sections"].get(name, {}).get("ok"))

    def save(self) -> None:
        self.data["total_seconds"] = round(time.perf_counter() - self.started, 3)
        if self.out is not None:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
            except OSError as error:
                log(f"could not write $OUT/gpu_check.json: {error}")


def log(message: str) -> None:
    print(f"[gpu_check] {time.strftime('%H:%M:%S')} {message}", flush=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mem_allocated(device) -> int | None:
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def mib(n) -> float | None:
    return None if n is None else round(n / 2**20, 2)


# ----- sections ---------------------------------------------------------------------------------------------------
def install_transformers_shim() -> list[str]:
    """fellrec is written against transformers 5.24, whose mask builders and decoder layers take the KV cache as
    `cache=`; earlier 5.x releases (5.17 included) name it `past_key_values` (required, positional in the mask
    builders), so fellrec's run_blocks fails there with "create_causal_mask() got an unexpected keyword argument
    'cache'". Where the installed transformers lacks `cache`, wrap those functions so that `cache=` is passed on as
    `past_key_values=`; nothing else changes. Returns what was wrapped (empty on a transformers that takes `cache`)."""
    import functools
    import importlib
    import inspect

    patched = []
    from transformers import masking_utils

    for name in ("create_causal_mask", "create_sliding_window_causal_mask"):
        fn = getattr(masking_utils, name, None)
        if fn is None or getattr(fn, "_gpu_check_shim", False):
            continue
        params = inspect.signature(fn).parameters
        if "cache" in params or "past_key_values" not in params:
            continue

        @functools.wraps(fn)
        def builder(*a, _fn=fn, cache=None, **kw):
            kw.setdefault("past_key_values", cache)
            return _fn(*a, **kw)

        builder._gpu_check_shim = True
        setattr(masking_utils, name, builder)
        patched.append(f"masking_utils.{name}")
    for module_name, cls_name in (("transformers.models.llama.modeling_llama", "LlamaDecoderLayer"),
                                  ("transformers.models.qwen2.modeling_qwen2", "Qwen2DecoderLayer")):
        cls = getattr(importlib.import_module(module_name), cls_name)
        params = inspect.signature(cls.forward).parameters
        if getattr(cls.forward, "_gpu_check_shim", False) or "cache" in params or "past_key_values" not in params:
            continue

        def forward(self, *a, _orig=cls.forward, cache=None, **kw):
            if cache is not None:
                kw.setdefault("past_key_values", cache)
            return _orig(self, *a, **kw)

        functools.update_wrapper(forward, cls.forward)
        forward._gpu_check_shim = True
        cls.forward = forward
        patched.append(f"{cls_name}.forward")
    return patched


def section_env(entry: dict, device) -> None:
    import platform

    import torch

    entry.update(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                 cuda_available=torch.cuda.is_available(), device=str(device))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        entry.update(device_name=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                     total_memory_gib=round(props.total_memory / 2**30, 2), bf16_supported=torch.cuda.is_bf16_supported())
    from fellrec.model.quantize import import_bnb

    bnb = import_bnb()
    if bnb is None:
        entry["bitsandbytes"] = None
    else:
        from bitsandbytes import cextension

        native = getattr(cextension, "lib", None)
        handle = vars(native).get("_lib") if native is not None else None
        entry.update(bitsandbytes=bnb.__version__, bitsandbytes_file=bnb.__file__,
                     bitsandbytes_backend=getattr(cextension, "BNB_BACKEND", None),
                     bitsandbytes_native=type(native).__name__,
                     bitsandbytes_native_path=getattr(handle, "_name", None),
                     bitsandbytes_native_cuda=bool(getattr(native, "compiled_with_cuda", False)))
    for name in ("transformers", "peft", "lightning", "torchmetrics", "numpy", "safetensors", "jsonargparse",
                 "tokenizers"):
        try:
            module = __import__(name)
            entry[name] = getattr(module, "__version__", "?")
        except Exception as error:  # noqa: BLE001 - record and go on
            entry[name] = f"import failed: {type(error).__name__}: {error}"
    import fellrec

    entry["fellrec_file"] = fellrec.__file__
    import inspect

    from transformers.masking_utils import create_causal_mask

    entry["create_causal_mask_takes_cache"] = "cache" in inspect.signature(create_causal_mask).parameters


def find_tokenizer_dir(explicit: str | None) -> Path:
    """The SmolLM2 tokenizer files: --tokenizer-dir, else `smollm2-tokenizer/` in a PYTHONPATH entry (.gpu_site),
    else the repository's .gpu_site, else fellrec's converted SmolLM2 cache."""
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(p) / "smollm2-tokenizer" for p in sys.path if p]
    candidates.append(REPO / ".gpu_site" / "smollm2-tokenizer")
    from fellrec.model.loading import cache_root

    candidates.append(cache_root() / "smollm2-135m-instruct")
    for c in candidates:
        if (c / "tokenizer.json").is_file():
            return c.resolve()
    raise FileNotFoundError(f"no tokenizer.json in any of {[str(c) for c in candidates]}")


def section_model(entry: dict, args, work: Path) -> Path:
    """Write a local model directory: random weights (seed 0) for the chosen config plus the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from fellrec.model.loading import tiny_config

    target = work / "model"
    target.mkdir(parents=True)
    if args.model == "smollm2-135m-random":
        config = LlamaConfig(**SMOLLM2_135M)
    elif args.model == "tiny-llama":
        config = tiny_config("tiny-llama")
    else:
        raise ValueError(f"unknown --model {args.model!r}")
    rope = getattr(config, "rope_parameters", None) or {}
    entry.update(model=args.model, hidden_size=config.hidden_size, layers=config.num_hidden_layers,
                 heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                 intermediate=config.intermediate_size, vocab=config.vocab_size,
                 tie_word_embeddings=config.tie_word_embeddings,
                 rope_theta=rope.get("rope_theta", getattr(config, "rope_theta", None)))
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    entry["params"] = sum(p.numel() for p in model.parameters())
    entry["init_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    model.to(torch.bfloat16).save_pretrained(target)  # bf16 on disk: half the bytes; loaded in compute_dtype
    entry["save_seconds"] = round(time.perf_counter() - t0, 2)
    del model
    gc.collect()
    tok_dir = find_tokenizer_dir(args.tokenizer_dir)
    entry["tokenizer_from"] = str(tok_dir)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, target / name)
    try:
        AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    except Exception as error:  # an older transformers may not know the saved tokenizer class: use the generic one
        entry["tokenizer_fallback"] = f"{type(error).__name__}: {error}"[:500]
        cfg_path = target / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_path.read_text())
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    from fellrec.config import ModelArgs
    from fellrec.model.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelArgs(path=str(target)))
    entry.update(tokenizer_class=type(tokenizer).__name__, tokenizer_len=len(tokenizer),
                 disk_mib=mib(sum(f.stat().st_size for f in target.iterdir())))
    return target


def write_synthetic_data(entry: dict, args, work: Path) -> Path:
    """fellrec's `csv` source: items.csv (made-up unique titles, two genres) and interactions.csv (users of two
    taste groups, each drawing 12-40 items from its group's Zipf popularity)."""
    import numpy as np

    root = work / "data"
    root.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    combos = len(_ADJ) * len(_NOUN)
    titles = []
    for i in range(args.items):
        adj, noun, sequel = _ADJ[i % len(_ADJ)], _NOUN[(i // len(_ADJ)) % len(_NOUN)], i // combos
        titles.append(f"The {adj} {noun}{' ' + str(sequel + 1) if sequel else ''} ({1950 + (i * 7) % 70})")
    with open(root / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "title", "genres"])
        for i, t in enumerate(titles):
            w.writerow([f"i{i}", t, "Drama" if i % 2 else "Comedy|Drama"])
    ranks = np.arange(1, args.items + 1)
    orders = [rng.permutation(args.items) for _ in range(2)]
    rows = 0
    with open(root / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for u in range(args.users):
            group = u % 2
            p = np.empty(args.items)
            p[orders[group]] = 1.0 / ranks ** 0.9
            n = int(min(args.items - 1, rng.integers(12, 41)))
            items = rng.choice(args.items, size=n, replace=False, p=p / p.sum())
            for step, item in enumerate(items):
                w.writerow([f"u{u}", f"i{int(item)}", 1_000_000 + 1000 * step + u])
                rows += 1
    entry.update(path=str(root), users=args.users, items=args.items, interactions=rows)
    return root


def run_config(args, model_dir: Path, data_dir: Path, quantize: str) -> SimpleNamespace:
    """The data/model/split/train/eval sections of --config (conf/ml100k.yaml) pointed at the synthetic data and
    the random model; unknown keys are an error, as in the CLI."""
    import yaml

    from fellrec.config import DataArgs, EvalArgs, ModelArgs, SplitArgs, TrainArgs

    raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    sections = {"data": DataArgs, "model": ModelArgs, "split": SplitArgs, "train": TrainArgs, "eval": EvalArgs}
    cfg = SimpleNamespace(**{name: cls(**(raw.get(name) or {})) for name, cls in sections.items()})
    cfg.data = dataclasses.replace(cfg.data, source="csv", path=str(data_dir), split="leave_one_out",
                                   train_samples=args.train_samples, valid_samples=None, test_users=None)
    cfg.model = dataclasses.replace(cfg.model, path=str(model_dir), quantize=quantize, objective="score",
                                    compute_dtype=args.compute_dtype)
    cfg.train = dataclasses.replace(cfg.train, precision=args.precision)
    return cfg


def build_split(cfg, device, seed: int = 0):
    import torch

    from fellrec.model.split import SplitModel

    torch.manual_seed(seed)  # the same LoRA initialisation in every arm
    return SplitModel(cfg.model, cfg.split, device=device, lr=cfg.train.lr)


def section_nf4(entry: dict, args, device, model_dir: Path, data_dir: Path) -> None:
    import torch

    from fellrec.evaluation.checkpoint_eval import autocast_for
    from fellrec.model.bench import bench_batch
    from fellrec.model.quantize import bytes_in_dtype, import_bnb, storage_bytes

    bnb = import_bnb()
    if bnb is None:
        raise RuntimeError("bitsandbytes is not importable")
    arms, resident = {}, {}
    for quantize in ("nf4", "none"):
        cfg = run_config(args, model_dir, data_dir, quantize)
        free_memory(device)
        before = mem_allocated(device)
        t0 = time.perf_counter()
        arms[quantize] = build_split(cfg, device)
        sync(device)
        entry[f"build_seconds_{quantize}"] = round(time.perf_counter() - t0, 2)
        after = mem_allocated(device)
        resident[quantize] = None if before is None else after - before
    entry["resident_mib"] = {q: mib(b) for q, b in resident.items()}
    nf4, dense = arms["nf4"], arms["none"]
    s4, sd = nf4.sides(), dense.sides()
    entry.update(split_k=s4.k, split_m=s4.m, server_blocks=len(s4.server.blocks), quantized_range=list(nf4.quantized_range))

    # The server's Linear4bit weights: where and how they are stored.
    mods = [m for m in s4.server.modules() if isinstance(m, bnb.nn.Linear4bit)]
    weights = [m.weight for m in mods]
    entry.update(linear4bit_modules=len(mods),
                 linear4bit_devices=sorted({str(w.device) for w in weights}),
                 linear4bit_dtypes=sorted({str(w.dtype) for w in weights}),
                 linear4bit_quant_types=sorted({str(getattr(w, "quant_type", None)) for w in weights}),
                 linear4bit_quant_state_ok=all(getattr(w, "quant_state", None) is not None for w in weights),
                 linear4bit_all_on_device=all(w.device.type == device.type for w in weights),
                 dense_linear_left_in_server=sum(1 for n, m in s4.server.named_modules()
                                                 if type(m) is torch.nn.Linear and "lora_" not in n))
    entry["server_bytes"] = {"nf4_as_stored": storage_bytes(s4.server), "dense_as_stored": storage_bytes(sd.server),
                             "bf16": bytes_in_dtype(s4.server, torch.bfloat16),
                             "fp32": bytes_in_dtype(s4.server, torch.float32)}
    entry["server_mib"] = {k: mib(v) for k, v in entry["server_bytes"].items()}
    entry["nf4_over_bf16"] = round(entry["server_bytes"]["nf4_as_stored"] / entry["server_bytes"]["bf16"], 4)

    # Forward: the same random weights (LoRA B = 0), fp32 compute, no autocast; and under the training autocast.
    batch = bench_batch(args.check_batch, args.check_seq, nf4.config.vocab_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["attention_mask"].bool()
    autocast = autocast_for(run_config(args, model_dir, data_dir, "nf4").train, device)
    with torch.no_grad():
        s4.eval(), sd.eval()
        for label, ctx in (("fp32", contextlib.nullcontext), ("autocast", autocast)):
            with ctx():
                h4 = s4.client.hidden(batch["input_ids"], batch["attention_mask"]).float()[mask]
                hd = sd.client.hidden(batch["input_ids"], batch["attention_mask"]).float()[mask]
            entry[f"forward_{label}"] = {
                "finite": bool(torch.isfinite(h4).all()),
                "rel_error_nf4_vs_dense": float((h4 - hd).norm() / hd.norm()),
                "mean_cosine": float(torch.nn.functional.cosine_similarity(h4, hd, dim=-1).mean()),
                "hidden_rms_dense": float(hd.pow(2).mean().sqrt())}
        logits4 = s4.client.lm_head(s4.client.hidden(batch["input_ids"], batch["attention_mask"]))[mask]
        logitsd = sd.client.lm_head(sd.client.hidden(batch["input_ids"], batch["attention_mask"]))[mask]
        entry["top1_agreement_fp32"] = float((logits4.argmax(-1) == logitsd.argmax(-1)).float().mean())
    del logits4, logitsd, h4, hd
    del dense, sd, arms["none"]
    free_memory(device)

    # Backward through the split under the training autocast: do the server's LoRA tensors get gradients?
    server_lora = [(n, p) for n, p in s4.server.named_parameters() if "lora_" in n and p.requires_grad]
    client_lora = [(n, p) for n, p in s4.client.named_parameters() if "lora_" in n and p.requires_grad]
    trainable = [p for _, p in server_lora + client_lora]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)

    def grads(tag: str) -> dict:
        s4.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = s4.client.loss(batch)
        loss.backward()
        s4.eval()
        out = {"loss": loss.item(), "loss_finite": bool(torch.isfinite(loss.detach()))}
        for side, named in (("server", server_lora), ("client", client_lora)):
            for kind in ("lora_A", "lora_B"):
                ps = [p for n, p in named if kind in n]
                nz = sum(1 for p in ps if p.grad is not None and bool(p.grad.abs().sum() > 0))
                out[f"{side}_{kind}_nonzero_grad"] = f"{nz}/{len(ps)}"
            ps = [p for _, p in named]
            out[f"{side}_nonzero_grad"] = sum(1 for p in ps if p.grad is not None and bool(p.grad.abs().sum() > 0))
            out[f"{side}_total"] = len(ps)
            out[f"{side}_devices"] = sorted({str(p.device) for p in ps})
        log(f"nf4 grads {tag}: server {out['server_nonzero_grad']}/{out['server_total']} non-zero")
        return out

    entry["grad_at_init"] = grads("at init")
    optimizer.step()  # moves every LoRA B off zero: then the A matrices get gradients as well
    entry["grad_after_one_step"] = grads("after one AdamW step")
    if device.type == "cuda":
        entry["peak_mib"] = mib(torch.cuda.max_memory_allocated(device))
    optimizer.zero_grad(set_to_none=True)
    del optimizer, s4, nf4, arms
    free_memory(device)


def section_fl_round(entry: dict, args, device, model_dir: Path, data_dir: Path, work: Path) -> None:
    """`python -m fellrec fit` on the synthetic data, 2 k-means clients, FELLRec, nf4, in a subprocess."""
    out_dir = work / "runs"
    name = "gpu_fl"
    # The real CLI (fellrec.cli.main, as `python -m fellrec`), with the same transformers shim as this process.
    launcher = (["-m", "fellrec"] if args.no_compat_shim else
                ["-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); import gpu_check; "
                       "gpu_check.install_transformers_shim(); from fellrec.cli import main; sys.exit(main())",
                 str(Path(__file__).resolve().parent)])
    cmd = [sys.executable, *launcher, "fit", "--config", args.config, "--name", name,
           "--out_dir", str(out_dir),
           "--data.source", "csv", "--data.path", str(data_dir), "--data.split", "leave_one_out",
           "--data.train_samples", str(args.fl_train_samples), "--data.test_users", str(args.fl_test_users),
           "--partition.method", "kmeans", "--partition.num_clients", str(args.fl_clients), "--partition.mf_epochs", "5",
           "--model.path", str(model_dir), "--model.quantize", "nf4", "--model.objective", "score",
           "--model.compute_dtype", args.compute_dtype,
           "--fed.strategy", "fellrec", "--fed.rounds", str(args.fl_rounds),
           "--train.accelerator", device.type, "--train.precision", args.precision,
           "--eval.batch_size", str(args.fl_eval_batch), "--log.wandb", "disabled"]
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", FELLREC_CACHE=str(work / "cache"),
               PYTHONUNBUFFERED="1")
    entry["command"] = " ".join(cmd)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.fl_timeout_s)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as error:
        rc = "timeout"
        stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        stderr = error.stderr.decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
    entry.update(returncode=rc, wall_seconds=round(time.perf_counter() - t0, 2))
    run_dir = out_dir / name
    report_out = Path(os.environ["OUT"]) / "fl_run" if os.environ.get("OUT") else None
    if report_out is not None:
        report_out.mkdir(parents=True, exist_ok=True)
        (report_out / "fit.log").write_text(f"$ {entry['command']}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        for f in ("config.yaml", "metrics.csv", "rounds.csv", "weights.csv", "similarity.csv", "results.json",
                  "results.csv"):
            if (run_dir / f).is_file():
                shutil.copy(run_dir / f, report_out / f)
    import re

    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr)  # tqdm's cursor moves
    lines = [ln.strip() for ln in plain.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    entry["stderr_tail"] = "\n".join(lines[-12:])[-1500:]
    if rc != 0:
        entry["stdout_tail"] = stdout[-2000:]
        raise RuntimeError(f"fellrec fit exited with {rc}: {entry['stderr_tail'][-600:]}")
    rounds = _read_csv(run_dir / "rounds.csv")
    entry["round_seconds"] = [float(r["seconds"]) for r in rounds]
    entry["mean_val_loss"] = [float(r["mean_val_loss"]) for r in rounds if r.get("mean_val_loss")]
    metrics = _read_csv(run_dir / "metrics.csv")
    entry["clients"] = [{k: r.get(k) for k in ("round", "client", "num_samples", "train_loss", "val_loss", "gamma",
                                               "steps", "seconds", "diverged")} for r in metrics]
    weights: dict = {}
    for r in _read_csv(run_dir / "weights.csv"):
        weights.setdefault(r["round"], {}).setdefault(r["i"], {})[r["j"]] = round(float(r["weight"]), 5)
    entry["aggregation_weights"] = {rnd: [[m[i][j] for j in sorted(m[i], key=int)] for i in sorted(m, key=int)]
                                    for rnd, m in weights.items()}
    results_file = run_dir / "results.json"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        entry["results"] = {"overall_ndcg@10": results.get("overall", {}).get("ndcg@10"),
                            "overall_recall@10": results.get("overall", {}).get("recall@10"),
                            "popularity_ndcg@10": results.get("popularity", {}).get("ndcg@10"),
                            "users": sum(c.get("users", 0) for c in results.get("clients", [])),
                            "speed": results.get("speed"), "best_round": results.get("best_round")}
    if not entry["aggregation_weights"]:
        raise RuntimeError("the run wrote no aggregation weights")


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_arm(args, device, model_dir: Path, data_dir: Path, quantize: str, data, tokenizer):
    """One arm of the side-by-side: SplitModel, item index, ScoreObjective, AdapterStore (as bench_train.py)."""
    from fellrec.evaluation.checkpoint_eval import autocast_for
    from fellrec.evaluation.grounding import ItemIndex
    from fellrec.model.adapters import AdapterStore
    from fellrec.objectives import ScoreObjective

    cfg = run_config(args, model_dir, data_dir, quantize)
    free_memory(device)
    before = mem_allocated(device)
    model = build_split(cfg, device)
    index = ItemIndex.build(model, tokenizer, data.titles, cache_dir=None)
    objective = ScoreObjective(cfg, model, tokenizer, data, lambda: index, autocast_for(cfg.train, device))
    store = objective.store = AdapterStore(model)
    objective.init_clients(store, {0: {u for u, _ in data.train_pairs}})
    sync(device)
    after = mem_allocated(device)
    return SimpleNamespace(cfg=cfg, model=model, objective=objective, store=store, index_seconds=index.build_seconds,
                           resident=None if before is None else after - before)


def section_speed(report: Report, args, device, model_dir: Path, data_dir: Path) -> None:
    """train_speed and ranking: both arms built once, timed interleaved."""
    import torch

    from fellrec.data.pipeline import load_data
    from fellrec.federation.local import train_client
    from fellrec.model.loading import load_tokenizer

    arms: dict = {}
    with report.section("train_speed") as entry:
        if entry is None:
            return
        cfg0 = run_config(args, model_dir, data_dir, "nf4")
        data = load_data(cfg0.data)
        tokenizer = load_tokenizer(cfg0.model)
        for quantize in ("nf4", "none"):
            arms[quantize] = build_arm(args, device, model_dir, data_dir, quantize, data, tokenizer)
        encoded = arms["nf4"].objective.encode(data.train)
        tokens = [len(e.input_ids) for e in encoded]
        entry.update(samples=len(encoded), mean_tokens=round(sum(tokens) / len(tokens), 1), max_tokens=max(tokens),
                     score_targets=cfg0.model.score_targets, prompt=cfg0.data.prompt,
                     precision=cfg0.train.precision, compute_dtype=cfg0.model.compute_dtype,
                     resident_mib={q: mib(a.resident) for q, a in arms.items()},
                     item_index_seconds={q: round(a.index_seconds, 2) for q, a in arms.items()})
        micro = [int(x) for x in args.micro_batches.split(",")]

        def run(quantize: str, mb: int, round_idx: int) -> tuple[float, int | None, int | None]:
            arm = arms[quantize]
            train = dataclasses.replace(arm.cfg.train, batch_size=mb, micro_batch_size=mb)
            sides = arm.store.activate(0)  # the initial adapter: every repeat trains the same steps
            sync(device)
            base = mem_allocated(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            result, _ = train_client(sides, arm.objective, arm.objective.param_groups(arm.store.live, train), encoded,
                                     train, round_idx, 0, device, arm.objective.autocast)
            sync(device)
            seconds = time.perf_counter() - t0
            if result.diverged:
                raise RuntimeError(f"{quantize} mb {mb}: the training loss diverged")
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            return seconds, base, peak

        t0 = time.perf_counter()
        for quantize in arms:  # warm-up: kernels, allocator, autotuning
            for mb in micro:
                run(quantize, mb, 0)
        warm = time.perf_counter() - t0  # about one repeat (an over-estimate: it holds the one-time costs)
        repeats = max(1, min(args.repeats, int((report.hard_stop - time.perf_counter()) // max(warm, 1e-3))))
        entry.update(warmup_seconds=round(warm, 2), repeats_run=repeats)
        if repeats < args.repeats:
            log(f"train_speed: {repeats} repeats instead of {args.repeats} to end by --hard-stop-s")
        times = {(q, mb): [] for q in arms for mb in micro}
        peaks: dict = {}
        order = list(arms)
        gc.collect()
        for r in range(repeats):
            for quantize in (order if r % 2 == 0 else order[::-1]):
                for mb in micro:
                    seconds, base, peak = run(quantize, mb, r + 1)
                    times[(quantize, mb)].append(seconds)
                    if peak is not None:
                        above = peak - base
                        old = peaks.get((quantize, mb))
                        peaks[(quantize, mb)] = (max(old[0], peak), max(old[1], above)) if old else (peak, above)
            log(f"train_speed repeat {r + 1}/{repeats}: " + ", ".join(
                f"{q} mb{mb} {len(encoded) / times[(q, mb)][-1]:.1f}/s" for q in arms for mb in micro))
        settings = {}
        for mb in micro:
            row = {}
            for q in arms:
                med = statistics.median(times[(q, mb)])
                row[q] = {"samples_per_s": round(len(encoded) / med, 2),
                          "tokens_per_s": round(sum(tokens) / med, 1),
                          "median_s": round(med, 4), "all_s": [round(t, 4) for t in times[(q, mb)]]}
                if (q, mb) in peaks:
                    peak, above = peaks[(q, mb)]
                    row[q].update(peak_allocated_mib=mib(peak), peak_above_base_mib=mib(above),
                                  footprint_alone_mib=mib(above + (arms[q].resident or 0)))
            row["nf4_over_dense_throughput"] = round(row["nf4"]["samples_per_s"] / row["none"]["samples_per_s"], 4)
            row["per_repeat_ratio_median"] = round(statistics.median(
                d / n for n, d in zip(times[("nf4", mb)], times[("none", mb)])), 4)
            settings[f"micro_batch_{mb}"] = row
        entry["settings"] = settings

    with report.section("ranking") as entry:
        if entry is None:
            return
        if not arms or len(arms) < 2:
            raise RuntimeError("train_speed did not build both arms")
        test = arms["nf4"].objective.data.test
        users = test[:args.rank_users] if args.rank_users else test
        entry.update(users=len(users), items=len(arms["nf4"].objective.items))
        batches = [int(x) for x in args.eval_batches.split(",")]
        for q, arm in arms.items():  # warm-up
            sides = arm.store.activate(0)
            for b in batches:
                arm.objective.score_samples(sides, users[:b], b)
        times = {(q, b): [] for q in arms for b in batches}
        peaks = {}
        for r in range(args.repeats):
            for q in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                sides = arms[q].store.activate(0)
                for b in batches:
                    sync(device)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    base = mem_allocated(device)
                    t0 = time.perf_counter()
                    scores = arms[q].objective.score_samples(sides, users, b)
                    sync(device)
                    times[(q, b)].append(time.perf_counter() - t0)
                    if not torch.isfinite(scores).all():
                        raise RuntimeError(f"{q} eval batch {b}: non-finite scores")
                    if device.type == "cuda":
                        peaks[(q, b)] = max(peaks.get((q, b), 0), torch.cuda.max_memory_allocated(device) - base)
        for b in batches:
            row = {}
            for q in arms:
                med = statistics.median(times[(q, b)])
                row[q] = {"users_per_s": round(len(users) / med, 2), "median_s": round(med, 4)}
                if (q, b) in peaks:
                    row[q]["peak_above_base_mib"] = mib(peaks[(q, b)])
            row["nf4_over_dense"] = round(row["nf4"]["users_per_s"] / row["none"]["users_per_s"], 4)
            entry[f"eval_batch_{b}"] = row
    arms.clear()
    free_memory(device)


# ----- main -------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="smollm2-135m-random", choices=["smollm2-135m-random", "tiny-llama"])
    p.add_argument("--config", default=str(REPO / "conf" / "ml100k.yaml"),
                   help="run config whose model/split/train/eval sections are used (data and quantize overridden)")
    p.add_argument("--tokenizer-dir", default=None, help="SmolLM2 tokenizer files (default: .gpu_site/smollm2-tokenizer)")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model.compute_dtype (the project default float32, trained under bf16 autocast on a GPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--users", type=int, default=512, help="synthetic users")
    p.add_argument("--items", type=int, default=800, help="synthetic items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-batch", type=int, default=8, help="nf4 section: batch of the forward/backward check")
    p.add_argument("--check-seq", type=int, default=64, help="nf4 section: tokens per sample")
    p.add_argument("--train-samples", type=int, default=512, help="train_speed: windows trained per timed call")
    p.add_argument("--micro-batches", default="16,64", help="train_speed: micro batch sizes (batch = micro batch)")
    p.add_argument("--eval-batches", default="32,256", help="ranking: eval batch sizes")
    p.add_argument("--rank-users", type=int, default=0, help="ranking: users (0: every test user)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per arm and setting (medians)")
    p.add_argument("--fl-rounds", type=int, default=2)
    p.add_argument("--fl-clients", type=int, default=3,
                   help="k-means clients (with 2, conf/ml100k.yaml's centred cosines are -1 by construction: the "
                        "FELLRec weights come out as the identity)")
    p.add_argument("--fl-train-samples", type=int, default=256, help="fl_round: training windows over both clients")
    p.add_argument("--fl-test-users", type=int, default=128)
    p.add_argument("--fl-eval-batch", type=int, default=64)
    p.add_argument("--fl-timeout-s", type=int, default=150)
    p.add_argument("--budget-s", type=int, default=200,
                   help="no section starts after this many seconds (the remote run must end within ~4 minutes)")
    p.add_argument("--hard-stop-s", type=int, default=235,
                   help="train_speed runs fewer repeats when the warm-up says they would end after this many seconds")
    p.add_argument("--sections", default="all",
                   help="comma list of nf4,fl_round,speed (env, model and data always run), or all")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary directory (model, data, run)")
    p.add_argument("--no-compat-shim", action="store_true",
                   help="do not wrap transformers' cache= keyword for transformers < 5.24 (install_transformers_shim)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    report = Report(args)
    wanted = {"nf4", "fl_round", "speed"} if args.sections == "all" else set(args.sections.split(","))
    work = Path(tempfile.mkdtemp(prefix="fellrec-gpu-check-"))
    os.environ["FELLREC_CACHE"] = str(work / "cache")  # item-index cache: never the user's
    log(f"work dir {work}")
    device = None
    model_dir = data_dir = None
    try:
        with report.section("env") as entry:
            import torch

            device = torch.device(args.device)
            if entry is None:
                raise RuntimeError("no time left")
            if device.type == "cuda" and not torch.cuda.is_available():
                device = None
                raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
            section_env(entry, device)
        if device is None:
            import torch

            device = torch.device(args.device)
        if not args.no_compat_shim:
            try:
                report.data["transformers_compat_shim"] = install_transformers_shim()
            except Exception as error:  # noqa: BLE001 - record and go on without it
                report.data["transformers_compat_shim"] = f"failed: {type(error).__name__}: {error}"
            log(f"transformers compat shim: {report.data['transformers_compat_shim'] or 'not needed'}")
        with report.section("model") as entry:
            if entry is not None:
                model_dir = section_model(entry, args, work)
        with report.section("data") as entry:
            if entry is not None:
                data_dir = write_synthetic_data(entry, args, work)
        if model_dir is None or data_dir is None:
            log("no model or data: the remaining sections cannot run")
        else:
            if "nf4" in wanted:
                with report.section("nf4") as entry:
                    if entry is not None:
                        section_nf4(entry, args, device, model_dir, data_dir)
                free_memory(device)
            if "fl_round" in wanted:
                with report.section("fl_round") as entry:
                    if entry is not None:
                        section_fl_round(entry, args, device, model_dir, data_dir, work)
            if "speed" in wanted:
                section_speed(report, args, device, model_dir, data_dir)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        secs = report.data["sections"]
        report.data["summary"] = {name: ("ok" if s.get("ok") else ("skipped" if s.get("skipped") else "FAILED"))
                                  for name, s in secs.items()}
        report.save()
        print(json.dumps(report.data, default=str), flush=True)
    return 0 if all(s.get("ok") for s in report.data["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
