"""Random subsampling of labelled anchors / proposals to a fixed batch with a foreground share."""

from __future__ import annotations

import torch


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick at most ``num_samples`` elements of ``labels [N]``: up to
    ``int(num_samples * positive_fraction)`` foreground ones (label not -1 and not ``bg_label``),
    the rest of the budget from the background ones (label == ``bg_label``); label -1 is ignored.

    Returns the indices ``(positive [P], negative [Q])`` (int64), each drawn with
    ``torch.randperm`` (positives first), so the draw follows the global random generator.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
