"""kNN over pooled, L2-normalised features: the shortlist every correspondence classifier
re-ranks, and the majority vote all of them use.

Reference (anguyen8/visual-correspondence-XAI, `EMD-Corr/src/KNN.py`): cosine similarity to
every training image, top 50 kept, prediction by majority vote among the 20 nearest with
`argmax(bincount)`, so a tie goes to the smallest class id.
"""

from __future__ import annotations

import torch

SHORTLIST = 50  # EMD-Corr/src/params.py K_value; CHM-Corr --N
VOTERS = 20  # EMD-Corr/src/params.py MajorityVotes_K; CHM-Corr --K


@torch.no_grad()
def shortlist(
    queries: torch.Tensor, bank: torch.Tensor, n: int = SHORTLIST, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-`n` cosine neighbours of each query among the bank rows.

    `queries` (Q, C) and `bank` (N, C) must be L2-normalised and on one device. Returns
    (similarities, indices), each (Q, n), most similar first; among equal similarities the
    smaller bank index comes first. Queries are processed `chunk` at a time, so memory stays
    at chunk × N.
    """
    if bank.shape[0] < n:
        raise ValueError(f"shortlist of {n} asked from a bank of {bank.shape[0]} exemplars")
    sims, idx = [], []
    for start in range(0, queries.shape[0], chunk):
        top, index = torch.topk(queries[start : start + chunk] @ bank.T, n, dim=1)
        # Order equal similarities by bank index: by index first, then stably by similarity.
        by_index = torch.sort(index, dim=1).indices
        top, index = top.gather(1, by_index), index.gather(1, by_index)
        order = torch.sort(top, dim=1, descending=True, stable=True).indices
        sims.append(top.gather(1, order))
        idx.append(index.gather(1, order))
    return torch.cat(sims), torch.cat(idx)


def majority_vote(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, votes) per row of `labels` (Q, k): the most frequent class, ties to the
    smallest class id (numpy `argmax(bincount)` as in the reference)."""
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    votes, prediction = counts.max(dim=1)  # torch.max returns the first maximal index
    return prediction, votes


def rerank(scores: torch.Tensor) -> torch.Tensor:
    """Positions sorting each row of `scores` (Q, n) by decreasing score; equal scores keep
    the kNN order."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices
