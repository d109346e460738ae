"""Head modules shared by the built-in task types: pooling, a pooled sequence head, a per-token head.

Each head is called as ``head(hidden_states, attention_mask)``. Their shapes follow transformers'
standard heads on purpose, so that hfmtl/publish/export.py can copy a trained head into a standard
``...ForSequenceClassification`` / ``...ForTokenClassification`` model.

Example:
    >>> import torch
    >>> hidden = torch.ones(2, 3, 4)
    >>> pool(hidden, torch.tensor([[1, 1, 0], [1, 0, 0]]), "mean").shape
    torch.Size([2, 4])
    >>> steps = torch.arange(6.0).view(2, 3, 1)
    >>> pool(steps, torch.tensor([[0, 1, 1], [1, 1, 0]]), "last").flatten().tolist()  # left, right padding
    [2.0, 4.0]
"""

from __future__ import annotations

import torch
from torch import nn


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One vector per sequence: the first token ('cls'), the mean over non-padding tokens ('mean'), or
    the last non-padding token ('last', for decoder models: the only token that has seen the whole input).

    'last' reads the attention mask, not the tokenizer's padding side: the rightmost position the mask
    keeps is the last real token whether the batch was padded on the left or on the right.
    """
    if mode == "cls":
        return hidden_states[:, 0]
    if mode == "last":
        if attention_mask is None:
            return hidden_states[:, -1]
        positions = torch.arange(attention_mask.shape[-1], device=hidden_states.device)
        last = (positions * attention_mask.to(positions.device).bool()).argmax(dim=-1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PooledHead(nn.Module):
    """Sequence-level head: pool -> dropout -> dense -> tanh -> dropout -> linear.

    The same shape as RoBERTa's classification head and as BERT's pooler + classifier, so a task trained
    here can later be mapped onto a standard `...ForSequenceClassification` / `...ForMultipleChoice`.
    """

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(pool(hidden_states, attention_mask, self.pooling))
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


class TokenHead(nn.Module):
    """Per-token head: dropout -> linear, as in transformers' `...ForTokenClassification`."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.out_proj(self.dropout(hidden_states))
