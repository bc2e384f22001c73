"""What FELLRec compares between clients (``fed.similarity_on``, METHOD.md section 4), as a C x C cosine matrix.

Every mode builds the Gram matrix G_ij = <v_i, v_j> tensor by tensor (no C x P matrix of all parameters is ever
held), then s_ij = G_ij / sqrt(G_ii G_jj):

* ``params``  v_i = client i's adapter tensors as they are (the release). All clients start from the same LoRA A with
  B = 0 and B stays small for many rounds, so this cosine is ~1 for every pair and the weights go uniform.
* ``update``  v_i = theta_i - theta_i(round start): what client i uploads this round.
* ``drift``   v_i = theta_i - theta_0: the change since the common initial adapter, accumulated over rounds.
* ``product`` v_i = the effective weight change B_i A_i of every LoRA module, through
  <B_i A_i, B_j A_j> = sum((B_i^T B_j) * (A_i A_j^T)) (r x r products; B.A itself is never built). Since B_0 = 0,
  B.A is both the module's weight and its drift. Tensors that are not a LoRA pair (the scoring objective's item
  table and bias, or anything else) enter as their drift, so this mode needs theta_0 whenever such tensors exist.

In ``update`` and ``drift`` every tensor (LoRA A and B, item table, ...) joins v_i as a plain flattened delta.

``centred`` (``fed.similarity_centred``) compares v_i - mean_j v_j instead (mean over this round's participants):
what a client learned beyond what every client learned. On ML-100K every client's update shares one large common
direction (the format, the popular items), so the plain update cosines of 5 clients sit within 0.55-0.70 of each
other and any kernel of them gives near-uniform weights; centred, they spread over about [-0.7, 0.6]. Done on the
Gram matrix, G_c = J G J with J = I - 11^T / C, so nothing larger than C x C is built. Two participants always
centre to opposite vectors (cosine -1); identical clients would centre to zero vectors, so they keep their plain
cosine 1 (equal weights).

Default for runs (``fed.similarity_on``): ``update``. Why (issue 11):
* ``params`` is ~uniform by construction (above); ``drift`` and ``product`` start out discriminating but fade,
  because every aggregate mixes the other clients' adapters into a client's, so the accumulated changes converge
  round after round; ``update`` measures only what the client's own data did this round and does not fade
  (tests/federation/test_similarity.py, two groups of identical clients).
* On ML-100K (experiments/similarity_modes.py: the real strategies, windows, k-means clients and validation users
  around a CPU-sized LoRA recommender; 3 seeds, paired) ``update`` is never worse than ``params`` beyond noise,
  better with 10000 windows in 3 of 3 seeds (score objective: best validation NDCG@10 +0.002 to +0.004, final
  +0.002 to +0.007), tied with the paper's 1024 windows, and spreads the aggregation weights most.
With privacy noise on the uploads (privacy.noise_multiplier) the update cosines shrink towards 0, so the weights
lean towards the heating alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import Tensor

from fellrec.errors import FellrecError

State = dict[str, Tensor]

SIMILARITY_ON = ("params", "update", "drift", "product")

# Below this norm product a cosine is undefined (an all-zero vector); it is taken as 0 (s^ = 1/2).
_EPS = 1e-12
# Centred vectors with less than this share of the squared norms are rounding: the clients are identical.
_ALIKE = 1e-9
_A, _B = ".lora_A.", ".lora_B."


def lora_pairs(state: Mapping[str, Tensor]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (A key, B key) pair of every LoRA module in ``state``, and the keys of every other tensor.

    A pair is ``<module>.lora_A.<rest>`` with ``<module>.lora_B.<rest>`` (peft names, with or without the adapter
    name), A of shape r x in and B of shape out x r. Anything else (a lone A, an embedding LoRA, the item table) is
    "other" and is compared as a plain tensor.
    """
    pairs, paired = [], set()
    for key, a in state.items():
        if _A not in key:
            continue
        b_key = _B.join(key.rsplit(_A, 1))
        b = state.get(b_key)
        if b is not None and a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[1]:
            pairs.append((key, b_key))
            paired.update((key, b_key))
    return pairs, [k for k in state if k not in paired]


def similarity_matrix(mode: str, states: Mapping[int, State], ids: Sequence[int],
                      start_states: Optional[Mapping[int, State]] = None,
                      initial: Optional[State] = None, centred: bool = False) -> Tensor:
    """s_ij for clients ``ids`` (in that order) under ``mode``, of the vectors centred on their mean when
    ``centred``; float64, diagonal exactly 1."""
    gram = gram_matrix(mode, states, ids, start_states, initial)
    return cosine_from_gram(centre_gram(gram) if centred else gram)


def centre_gram(gram: Tensor) -> Tensor:
    """The Gram matrix of v_i - mean_j v_j from that of the v_i: J G J, J = I - 11^T / C. When the v_i are all
    the same (nothing left after centring, up to rounding) the clients are alike and ``gram`` is kept as it is."""
    j = torch.eye(len(gram), dtype=gram.dtype) - 1.0 / len(gram)
    centred = j @ gram @ j
    return centred if centred.trace() > _ALIKE * gram.trace() else gram


def gram_matrix(mode: str, states: Mapping[int, State], ids: Sequence[int],
                start_states: Optional[Mapping[int, State]] = None,
                initial: Optional[State] = None) -> Tensor:
    """G_ij = <v_i, v_j> (float64, C x C) for the vectors ``mode`` compares."""
    if mode not in SIMILARITY_ON:
        raise FellrecError(f"unknown fed.similarity_on {mode!r}; valid: {', '.join(SIMILARITY_ON)}")
    keys = list(states[ids[0]])
    pairs, others = lora_pairs(states[ids[0]]) if mode == "product" else ([], keys)
    base = _reference(mode, ids, {k: states[ids[0]][k] for k in others}, start_states, initial)
    gram = torch.zeros(len(ids), len(ids), dtype=torch.float64)
    for key in others:
        x = torch.stack([_f64(states[c][key]).reshape(-1) - _ref(base, c, key) for c in ids])
        gram += x @ x.T
    for a_key, b_key in pairs:
        gram += _product_gram([_f64(states[c][a_key]) for c in ids], [_f64(states[c][b_key]) for c in ids])
    return gram


def cosine_from_gram(gram: Tensor) -> Tensor:
    """s_ij = G_ij / sqrt(G_ii G_jj), clamped to [-1, 1]; diagonal exactly 1; a zero vector has cosine 0."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    s = gram / (norms[:, None] * norms[None, :]).clamp_min(_EPS)
    s = s.clamp(-1.0, 1.0)
    s.fill_diagonal_(1.0)
    return s


def _product_gram(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """<B_i A_i, B_j A_j>_F for all i, j: A_k is r x in, B_k is out x r, so both factors are C x C x r x r."""
    a_s, b_s = torch.stack(a), torch.stack(b)
    btb = torch.einsum("ior,jos->ijrs", b_s, b_s)  # B_i^T B_j
    aat = torch.einsum("irn,jsn->ijrs", a_s, a_s)  # A_i A_j^T
    return (btb * aat).sum(dim=(2, 3))


def _reference(mode: str, ids: Sequence[int], like: Mapping[str, Tensor], start_states, initial) -> Optional[dict]:
    """What each client's tensors (``like``: their names and shapes) are measured from: None (params), its
    round-start state (update), or the common initial state for every client (drift, product's non-LoRA tensors)."""
    keys = list(like)
    if mode == "params" or not keys:
        return None
    if mode == "update":
        if start_states is None:
            raise FellrecError("fed.similarity_on=update needs each participant's adapter at the start of the round "
                               "(aggregate_round(..., start_states=...))")
        missing = [c for c in ids if c not in start_states]
        if missing:
            raise FellrecError(f"fed.similarity_on=update: no round-start adapter for clients {missing}")
        return {c: {k: _flat(start_states[c], k, like[k], f"client {c}") for k in keys} for c in ids}
    if initial is None:
        raise FellrecError(f"fed.similarity_on={mode} needs the common initial adapter: call "
                           "strategy.set_initial(state) before the first round")
    common = {k: _flat(initial, k, like[k], "the initial adapter") for k in keys}
    return {c: common for c in ids}


def _flat(state: Mapping[str, Tensor], key: str, like: Tensor, owner: str) -> Tensor:
    """``state[key]`` flattened, after checking it matches the current tensor it is subtracted from."""
    if key not in state:
        raise FellrecError(f"the reference adapter of {owner} lacks tensor {key!r}")
    if tuple(state[key].shape) != tuple(like.shape):
        raise FellrecError(f"the reference adapter of {owner}: {key!r} has shape {tuple(state[key].shape)}, "
                           f"the current one {tuple(like.shape)}")
    return _f64(state[key]).reshape(-1)


def _ref(base: Optional[dict], client: int, key: str):
    return 0.0 if base is None else base[client][key]


def _f64(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)
