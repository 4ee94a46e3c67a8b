"""Faster R-CNN with the static deep RPN head (MODEL.RPN.HEAD_NAME "FixRPNHead")."""

from cvpods.modeling import GeneralizedRCNN


def build_model(cfg) -> GeneralizedRCNN:
    return GeneralizedRCNN(cfg)
