"""ROI heads of two-stage detectors."""

from .box_head import FastRCNNConvFCHead
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference, fast_rcnn_losses
from .roi_heads import StandardROIHeads, add_ground_truth_to_proposals

__all__ = [
    "FastRCNNConvFCHead",
    "FastRCNNOutputLayers",
    "StandardROIHeads",
    "add_ground_truth_to_proposals",
    "fast_rcnn_inference",
    "fast_rcnn_losses",
]
