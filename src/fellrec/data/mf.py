"""A small BPR matrix-factorisation model: the user embeddings the k-means partitioner clusters."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm


def train_bpr_user_embeddings(user_idx: np.ndarray, item_idx: np.ndarray, num_users: int, num_items: int,
                              dim: int, epochs: int, seed: int, batch_size: int = 1024) -> np.ndarray:
    """User embeddings (num_users x dim) of implicit-feedback MF trained with the BPR loss.

    Runs single-threaded with its own generator, so the same inputs and seed give the same bits in every process.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(torch.as_tensor(user_idx), torch.as_tensor(item_idx), num_users, num_items, dim, epochs,
                      seed, batch_size)
    finally:
        torch.set_num_threads(threads)


def _train(users, items, num_users, num_items, dim, epochs, seed, batch_size) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    user_emb = torch.nn.Parameter(torch.randn(num_users, dim, generator=gen) * 0.1)
    item_emb = torch.nn.Parameter(torch.randn(num_items, dim, generator=gen) * 0.1)
    opt = torch.optim.Adam([user_emb, item_emb], lr=0.01)
    for _ in tqdm(range(epochs), desc="MF user embeddings", unit="epoch", leave=False):
        order = torch.randperm(len(users), generator=gen)
        negatives = torch.randint(num_items, (len(users),), generator=gen)
        for start in range(0, len(users), batch_size):
            batch = order[start:start + batch_size]
            u = user_emb[users[batch]]
            pos = (u * item_emb[items[batch]]).sum(-1)
            neg = (u * item_emb[negatives[batch]]).sum(-1)
            reg = 1e-4 * (u.pow(2).sum() + item_emb[items[batch]].pow(2).sum()) / len(batch)
            loss = -torch.nn.functional.logsigmoid(pos - neg).mean() + reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    return user_emb.detach().double().numpy()
