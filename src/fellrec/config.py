"""Typed configuration of a fellrec run.

One dataclass per concern; each field's docstring is its ``--help`` text. A YAML config file holds one mapping per
section (``data:``, ``partition:``, ``model:``, ``split:``) plus the top-level run keys; any key can be overridden on
the command line as ``--section.key value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class DataArgs:
    """Where the interactions come from and how they become prompts."""

    source: Literal["movielens100k", "bigrec_json", "amazon2018", "csv"] = "movielens100k"
    """Reader: `movielens100k` (from the installed recbole wheel), `bigrec_json` (BIGRec/FELLRec JSON records and
    id2name.txt), `amazon2018` (raw Amazon 2018 reviews + metadata JSON lines), `csv` (your own two CSV files)."""
    path: Optional[str] = None
    """Directory holding the source files (not needed for movielens100k, which ships in the recbole wheel)."""
    train_file: str = "train.json"
    """bigrec_json: training records, relative to `path`."""
    valid_file: str = "valid.json"
    """bigrec_json: validation records, relative to `path`."""
    test_file: str = "test.json"
    """bigrec_json: test records (`output` may hold several quoted titles), relative to `path`."""
    titles_file: str = "id2name.txt"
    """bigrec_json: `id<TAB>title` per line, relative to `path`."""
    reviews_file: str = "reviews.json.gz"
    """amazon2018: reviews as JSON lines (`reviewerID`, `asin`, `unixReviewTime`), optionally gzipped."""
    meta_file: str = "meta.json.gz"
    """amazon2018: item metadata as JSON lines (`asin`, `title`, optional `category`), optionally gzipped."""
    core: int = 5
    """amazon2018: keep users and items with at least this many interactions (applied until stable)."""
    interactions_file: str = "interactions.csv"
    """csv: header `user,item,timestamp`."""
    items_file: str = "items.csv"
    """csv: header `item,title` and an optional `genres` column (`|`-separated)."""
    split: Optional[Literal["leave_one_out", "global_time"]] = None
    """How interactions become train/valid/test: per-user leave-one-out, or one global chronological cut. null picks
    the source's usual split: global_time for amazon2018 (the paper's preprocessing), leave_one_out otherwise.
    (bigrec_json files are already split and ignore this.)"""
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """global_time: fractions of interactions, in time order, for train, valid and test."""
    max_history: int = 10
    """Most history titles in one prompt (the sliding window length)."""
    train_samples: Optional[int] = None
    """Few-shot: keep this many training samples, drawn with `seed` (null keeps all)."""
    valid_samples: Optional[int] = None
    """Keep this many validation samples, drawn with `seed` (null keeps all)."""
    test_users: Optional[int] = None
    """Keep this many test users, drawn with `seed` (null keeps all)."""
    seed: int = 42
    """Seed of every sampling step in the data stage."""
    item_noun: str = "movies"
    """Plural noun for items in the prompt ("movies", "video games"); the singular drops a trailing s."""
    item_verb: str = "watched"
    """Past-tense verb for the interaction in the prompt ("watched", "played")."""
    prompt: Literal["bigrec", "compact"] = "bigrec"
    """`bigrec`: BIGRec's Alpaca template (about 60 tokens of instructions per sample); `compact`: "Movies watched:
    T1; T2; ... Next movie:"."""
    title_years: bool = True
    """Keep the trailing release year of the history titles in the prompt ("Toy Story (1995)"); false drops it
    ("Toy Story"): MovieLens titles then take about 40% of the tokens, and training and ranking run faster. Item
    tables and grounding keep the full titles."""


@dataclass
class PartitionArgs:
    """How users are grouped into clients."""

    method: Literal["kmeans", "dirichlet", "iid"] = "kmeans"
    """`kmeans` on user embeddings of a matrix-factorisation model (the paper's way), `dirichlet` (non-IID over item
    groups), or `iid` (random, equal sizes)."""
    num_clients: int = 5
    """Number of clients."""
    seed: int = 42
    """Seed of the partition: the same seed gives the same partition in every process and run."""
    mf_dim: int = 32
    """kmeans: embedding size of the matrix-factorisation model."""
    mf_epochs: int = 30
    """kmeans: training epochs of the matrix-factorisation model (BPR loss)."""
    kmeans_iters: int = 100
    """kmeans: most Lloyd iterations."""
    dirichlet_alpha: float = 0.5
    """dirichlet: concentration; small values give very uneven clients."""
    dirichlet_groups: Literal["popularity", "genre"] = "popularity"
    """dirichlet: what a user's dominant group is: an item-popularity bucket or a genre."""
    popularity_buckets: int = 5
    """dirichlet with popularity groups: number of equal-size popularity buckets of items."""


@dataclass
class ModelArgs:
    """The backbone LLM and its adapters."""

    name: str = "smollm2-135m"
    """A packaged model (`smollm2-135m`) or a tiny random test model (`tiny-llama`, `tiny-qwen2`);
    ignored when `path` is set."""
    path: Optional[str] = None
    """A local Hugging Face model directory (Llama or Qwen2 family). Nothing is ever downloaded."""
    quantize: Literal["none", "nf4", "int8"] = "nf4"
    """Storage of the frozen server-side blocks: dense, bitsandbytes nf4 (the GPU default), or int8 with one scale per
    row (computed by PyTorch's int8 kernel on a CPU, about twice the fp32 rate on AVX2; dequantised elsewhere)."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of activations and of the 4-bit matmuls."""
    max_length: int = 512
    """Cut-off of a tokenised prompt plus response."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Module names that get LoRA adapters, on both sides of the split."""
    objective: Literal["generate", "score"] = "generate"
    """`generate` (BIGRec: write the next title, ground it to an item) or `score` (RecFormer-like: the client's
    final-norm state at the end of the prompt is the user vector; every item is scored by an item table the client
    holds: scale x cos(user, item) + item bias, full-softmax cross-entropy)."""
    score_bias: Literal["zero", "log_count", "client_prior"] = "log_count"
    """score: the item bias starts at 0, or at log(1 + count) of the item in the client's own training interactions
    (the head then starts at the client's popularity ranking, and aggregation mixes it with the other clients'), or
    `client_prior`: those log-counts are a fixed prior the client adds to every score and never uploads, and the
    learnt (aggregated) bias starts at 0 on top of it."""
    score_scale: float = 1.0
    """score: initial scale of the cosine (learnt); a large one lets the untrained cosine drown the bias."""
    score_targets: Literal["last", "all"] = "last"
    """score: the loss reads the end of the prompt only (`last`), or also the end of every history title, each
    predicting the title after it (`all`: about max_history targets per sample at the cost of one)."""
    score_pooling: Literal["last", "mean"] = "last"
    """score: the user vector is the state at the prompt's last token, or the mean over the prompt's tokens
    (`mean` reads the last position only)."""


@dataclass
class SplitArgs:
    """The flexible storage strategy: which decoder blocks stay on the client."""

    head_layers: int = 2
    """k: the first k decoder blocks run on the client (with the embeddings)."""
    tail_layers: int = 1
    """m: the last m decoder blocks run on the client (with the final norm and the LM head)."""
    per_client: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per-client override `{client: [k, m]}` for clients with another resource budget."""
    boundary_noise: float = 0.0
    """Defence: Gaussian noise added on the client to h_k before it leaves, in training and inference; its std is
    this multiple of each token's RMS of h_k (0: off). `fellrec audit --boundary-noise` measures what it hides."""


@dataclass
class FedArgs:
    """Federated rounds and the aggregation strategy."""

    strategy: Literal["fellrec", "fedavg", "fedprox", "local", "centralized"] = "fellrec"
    """`fellrec` (dynamic balance), `fedavg`, `fedprox`, `local` (no aggregation), `centralized` (one client holding
    every sample)."""
    rounds: int = 3
    """Communication rounds (75 in the paper; few on a CPU)."""
    sample_fraction: float = 1.0
    """Fraction of clients trained in each round (at least one); the others keep their adapters."""
    mu: float = 0.01
    """fedprox: weight of the proximal term."""
    similarity_weighting: Literal["linear", "softmax"] = "linear"
    """fellrec: linear (s+1)/2 weights (the release) or softmax attention over cosine similarities."""
    tau: float = 1.0
    """fellrec with softmax weighting: temperature."""
    similarity_on: Literal["params", "update", "drift", "product"] = "update"
    """fellrec: what the cosine between clients compares: `update` (this round's uploaded change; measured best on
    validation NDCG@10, experiments/results/ml100k/similarity_modes_1024.md), `params` (whole adapters, the release:
    near-uniform weights), `drift` (change since the common initial adapter), `product` (each LoRA module's B.A)."""
    similarity_centred: bool = False
    """fellrec: compare each client's vector minus the participants' mean (what it learned beyond what every client
    learned; measured in experiments/results/ml100k/similarity_modes_1024.md); False as in the release."""
    heating: bool = True
    """fellrec: curriculum heating of the aggregation weights (False: gamma = 1, the ablation)."""
    dynamic: bool = True
    """fellrec: similarity weights (False: FedAvg weights, the ablation)."""
    alpha: float = 0.7
    """Curriculum heating alpha."""
    beta: float = 5.0
    """Curriculum heating beta (rounds scale of the heating)."""
    temperature: float = 0.05
    """Curriculum heating T of the softmax over the clients' signals."""
    signal: Literal["train_loss", "val_loss", "recall", "ndcg"] = "train_loss"
    """What drives the heating: training loss (paper), validation loss, or 1 - a validation ranking metric."""
    patience: int = 5
    """Early stopping: rounds without improvement of the weighted mean validation loss."""
    min_rounds: int = 10
    """Early stopping never triggers before this many rounds."""


@dataclass
class TrainArgs:
    """Local training on each client."""

    local_epochs: int = 1
    """Epochs over the client's own samples in each round (E)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    item_lr: Optional[float] = None
    """score: learning rate of the item table, bias and scale (null: train.lr)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps, in round 0 only (as the release); then linear decay to 0 over each round."""
    batch_size: int = 8
    """Effective batch: micro-batches are accumulated up to it."""
    micro_batch_size: int = 4
    """Samples per forward/backward pass."""
    group_by_length: bool = True
    """Within each optimizer step, put samples of similar length in the same micro-batch (less padding; the step's
    samples, hence its gradient, are unchanged)."""
    max_grad_norm: float = 1.0
    """Gradient clipping of the adapters (0 disables it)."""
    train_on_inputs: bool = False
    """Also put the loss on the prompt tokens (the release does; the default masks them)."""
    keep_optimizer_state: bool = False
    """Keep each client's AdamW state across rounds (default: fresh each round, as the release)."""
    val_samples_per_client: Optional[int] = 64
    """Validation samples per client for the per-round validation loss (null: all)."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto: bf16-mixed on a GPU and on a CPU with AVX512-BF16 or AMX (1.27x the fp32 training step of SmolLM2 with
    nf4 middle blocks on this project's 2-core AVX512-BF16 machine, experiments/bench_lm_head.py), 32-true on other
    CPUs."""
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train."""
    devices: int = 1
    """Processes (CPU, gloo) or GPUs (nccl); clients are spread over them. Under torchrun, WORLD_SIZE wins."""
    seed: int = 42
    """Seed of client sampling, data order, LoRA initialisation and dropout."""


@dataclass
class LogArgs:
    """Where the per-round numbers go."""

    wandb: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode: offline runs write to RUN_DIR/wandb and make no network connection."""
    project: str = "fellrec"
    """W&B project."""


@dataclass
class EvalArgs:
    """Ranking evaluation (BIGRec grounding): at the end of `fellrec fit`, each round when asked, by `fellrec test`
    and by `fellrec recommend`."""

    num_beams: int = 4
    """Beam search width of the title generation (1: greedy)."""
    max_new_tokens: int = 24
    """Longest generated title, in tokens."""
    batch_size: int = 16
    """Users generated together."""
    grounding: Literal["l2", "constrained"] = "l2"
    """l2: nearest item titles to the generated text (BIGRec); constrained: beam search limited to real titles."""
    popularity_aware: bool = False
    """BIGRec's popularity-aware grounding, its exponent chosen on validation users only."""
    collaborative_aware: bool = False
    """BIGRec's grounding with a collaborative term: each client trains its own SASRec on its own training windows
    and ranks by (1 + C)^(-gamma) x D (C its min-max normalised SASRec scores for the user, D the normalised L2
    distance), gamma chosen on validation users only."""
    mask: Literal["prompt", "history"] = "prompt"
    """Items never recommended to a user: `prompt` masks the prompt's items (FELLRec's protocol); `history` masks
    every item of the user's training and validation history (the usual full-ranking protocol). Popularity is ranked
    under the same mask, and results.json says which (`protocol`)."""
    quantize: Optional[Literal["int8"]] = None
    """`int8`: the final ranking (end of `fit`, `fellrec test`) runs the server blocks in int8 (one scale per row;
    PyTorch's dynamic-int8 kernel on a CPU), swapped from dense (`model.quantize: none`) blocks after training, so
    training keeps full precision (a CPU setting: on a GPU the blocks stay as trained); null ranks with the blocks the
    model trained with."""
    users_per_client: Optional[int] = None
    """Evaluate this many test users per client, drawn with `seed` (null: all)."""
    seed: int = 42
    """Seed of the user samples."""
    final: bool = True
    """`fellrec fit` ends by evaluating every client's best adapter on its test users (results.json in the run)."""
    per_round: bool = False
    """Also rank each client's validation users after every round (logged per client; always on when fed.signal is
    recall or ndcg, which feed the balance strategy)."""
    val_users_per_client: int = 8
    """Validation users per client ranked in each round by the per-round evaluation."""


@dataclass
class PrivacyArgs:
    """Optional protection of the adapter updates a client uploads (clipping and Gaussian noise, as DP-FedAvg)."""

    clip_norm: Optional[float] = None
    """Clip the L2 norm of each client's adapter update (new - start of round) to this value (null: no clipping)."""
    noise_multiplier: float = 0.0
    """Add Gaussian noise with std noise_multiplier x clip_norm to every coordinate of the clipped update."""
