"""Smooth L1 (Huber-like) loss as the R-CNN family uses it."""

from __future__ import annotations

import torch


def smooth_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float, reduction: str = "none"
) -> torch.Tensor:
    """``0.5 * d**2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 * beta``; ``beta < 1e-5``: L1.

    ``input``, ``target``: same shape. ``reduction``: "none", "mean" or "sum".
    """
    if beta < 1e-5:
        loss = torch.abs(input - target)
    else:
        diff = torch.abs(input - target)
        loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"unknown reduction {reduction!r}; expected 'none', 'mean' or 'sum'")
    return loss
