"""3x3 convolutions with few output channels (the gates' and the FCOS predictors'), for training on CPU.

A library 3x3 convolution with 1-8 outputs makes poor use of a CPU: oneDNN is built for many
output channels, and in training its two backward passes are slower still. The same convolution
is a 1x1 convolution to one map per (output, tap), a plain matrix product, followed by the sum of
the nine taps' maps, each shifted into place (``F.fold``, col2im; its backward is ``unfold``).
Same function, same gradients up to float rounding (the taps are summed in another order); on one
CPU thread the whole, forward and backward, is 1.3-4x faster than the library convolution (1-7
outputs over 64 channels). Several such convolutions reading the same input share one pass
(:func:`stacked_conv3x3`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv3x3_by_taps", "stacked_conv3x3", "uses_taps"]


def conv3x3_by_taps(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` as a 1x1 convolution and a fold of the taps.

    ``x [N, C, H, W]``, ``weight [G, C, 3, 3]``, ``bias [G]`` or None -> ``[N, G, H, W]``.
    """
    groups, channels = weight.shape[:2]
    h, w = x.shape[-2:]
    # fold adds row k * 9 + (3 i' + j') of block (y, x) to output (k, y + i' - 1, x + j' - 1):
    # that row must hold tap (2 - i', 2 - j') of output k, i.e. the kernel flipped.
    per_tap = weight.flip(2, 3).permute(0, 2, 3, 1).reshape(groups * 9, channels, 1, 1)
    taps = F.conv2d(x, per_tap).flatten(2)  # [N, 9 G, H * W]
    out = F.fold(taps, (h, w), kernel_size=3, padding=1)
    return out if bias is None else out + bias.view(1, groups, 1, 1)


def uses_taps(x: torch.Tensor, convs: Sequence[nn.Conv2d]) -> bool:
    """Whether :func:`stacked_conv3x3` runs ``convs`` on ``x`` as :func:`conv3x3_by_taps`: in
    training on CPU (gradients enabled, a 4-D input), for 3x3 convolutions with stride 1,
    padding 1, no dilation, no groups and zero padding."""
    return (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and all(
            c.kernel_size == (3, 3)
            and c.stride == (1, 1)
            and c.padding == (1, 1)
            and c.dilation == (1, 1)
            and c.groups == 1
            and c.padding_mode == "zeros"
            for c in convs
        )
    )


def stacked_parameters(convs: Sequence[nn.Conv2d]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolutions' weights ``[sum G_i, C, k, k]`` and biases ``[sum G_i]`` (None when no
    conv has one; zeros for those without) stacked along the outputs."""
    weight = torch.cat([c.weight for c in convs]) if len(convs) > 1 else convs[0].weight
    if all(c.bias is None for c in convs):
        return weight, None
    if len(convs) == 1:
        return weight, convs[0].bias
    biases = [c.weight.new_zeros(c.out_channels) if c.bias is None else c.bias for c in convs]
    return weight, torch.cat(biases)


def stacked_conv3x3(convs: Sequence[nn.Conv2d], x: torch.Tensor) -> list[torch.Tensor]:
    """``[conv(x) for conv in convs]`` (each ``[N, G_i, H, W]``) for convolutions reading the same
    input ``x [N, C, H, W]``: in one :func:`conv3x3_by_taps` of their stacked kernels when
    :func:`uses_taps` (training on CPU), else each convolution itself (its module called)."""
    if not uses_taps(x, convs):
        return [conv(x) for conv in convs]
    out = conv3x3_by_taps(x, *stacked_parameters(convs))
    if len(convs) == 1:
        return [out]
    return list(out.split([c.out_channels for c in convs], dim=1))
