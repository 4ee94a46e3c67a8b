"""Faster R-CNN with the fine-grained dynamic RPN head (MODEL.RPN.HEAD_NAME "DynamicRPNHead")."""

from cvpods.modeling import GeneralizedRCNN


def build_model(cfg) -> GeneralizedRCNN:
    return GeneralizedRCNN(cfg)
