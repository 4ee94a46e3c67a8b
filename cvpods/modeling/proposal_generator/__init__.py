"""Proposal generators: the Region Proposal Network and its heads."""

from .rpn import RPN
from .rpn_heads import (
    RPN_HEAD_REGISTRY,
    DynamicRPNHead,
    FixRPNHead,
    RPNHeadOutputs,
    StandardRPNHead,
    build_rpn_head,
)
from .rpn_outputs import find_top_rpn_proposals

__all__ = [
    "RPN",
    "RPN_HEAD_REGISTRY",
    "DynamicRPNHead",
    "FixRPNHead",
    "RPNHeadOutputs",
    "StandardRPNHead",
    "build_rpn_head",
    "find_top_rpn_proposals",
]
