"""Matching predictions (anchors, proposals) to ground-truth boxes by IoU, with match quality labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Matcher:
    """Assign each prediction to the ground truth it overlaps most, and label the match.

    ``thresholds`` (increasing) split the IoU axis into intervals ``[-inf, t0), [t0, t1), ...,
    [tk, inf)`` (a value equal to a threshold belongs to the upper interval); ``labels`` gives each
    interval's label: 1 foreground, 0 background, -1 ignore. For the RPN: thresholds (0.3, 0.7),
    labels (0, -1, 1); for the ROI heads: (0.5,), (0, 1).

    ``allow_low_quality_matches``: also label 1 every prediction that has, for some ground truth,
    that ground truth's highest IoU (ties included), even below the foreground threshold, so that
    every ground truth gets at least one match (the RPN does this).
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool = False,
    ) -> None:
        thresholds = [float(t) for t in thresholds]
        if any(low > high for low, high in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"IOU_THRESHOLDS must be increasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"IOU_LABELS needs one label per interval ({len(thresholds) + 1}), got {list(labels)}"
            )
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"IOU_LABELS must be -1, 0 or 1, got {list(labels)}")
        self.thresholds = [-math.inf, *thresholds, math.inf]
        self.labels = [int(label) for label in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``match_quality_matrix [M, N]`` (IoU of M ground truths with N predictions) ->
        ``matches [N]`` (int64 index of the best ground truth; 0 when M == 0) and
        ``match_labels [N]`` (int8 in {-1, 0, 1})."""
        num_predictions = match_quality_matrix.shape[1]
        device = match_quality_matrix.device
        if match_quality_matrix.shape[0] == 0:
            matches = torch.zeros(num_predictions, dtype=torch.int64, device=device)
            match_labels = torch.full(
                (num_predictions,), self.labels[0], dtype=torch.int8, device=device
            )
            return matches, match_labels
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_ones(num_predictions, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_interval = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_interval] = label
        if self.allow_low_quality_matches:
            self._set_low_quality_matches(match_labels, match_quality_matrix)
        return matches, match_labels

    @staticmethod
    def _set_low_quality_matches(
        match_labels: torch.Tensor, match_quality_matrix: torch.Tensor
    ) -> None:
        """Label 1 the predictions that are some ground truth's best match (its highest IoU)."""
        best_per_gt = match_quality_matrix.max(dim=1).values
        _, prediction_ids = torch.nonzero(
            match_quality_matrix == best_per_gt[:, None], as_tuple=True
        )
        match_labels[prediction_ids] = 1
