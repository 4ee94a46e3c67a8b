"""Defaults shared by every detector: model input, backbone, data, solver, test, output."""

from __future__ import annotations

import torch

from .base_config import BaseConfig

#: Defaults of ``DATASETS.SHAPES`` (the one copy: the config, the presets and
#: :func:`cvpods.data.datasets.register_shapes` without a config all read it).
SHAPES_DEFAULTS = dict(NUM_TRAIN=2000, NUM_VAL=200, MIN_SIZE=256, MAX_SIZE=384, SEED=0)

_DEFAULTS = dict(
    MODEL=dict(
        # "cuda" where a GPU is visible, else "cpu"; set it explicitly to pin a device.
        DEVICE="cuda" if torch.cuda.is_available() else "cpu",
        # A checkpoint, state dict, official model-zoo file, torchvision .pth or MSRA .pkl.
        WEIGHTS="",
        # Evaluation / demo refuse weights that fill less than this share of the model's tensors.
        WEIGHTS_MIN_MATCHED_FRACTION=0.5,
        # Inference precision of cvpods_test, the demo and DefaultTrainer.test: "float32" or
        # "bfloat16" (the network under torch.autocast; GroupNorm statistics, gates, box decoding
        # and NMS stay float32; see cvpods/engine/precision.py). Training is always float32.
        INFERENCE_DTYPE="float32",
        # bfloat16 on a CPU without native bfloat16 (AVX512-BF16 / AMX) runs float32 with a
        # warning unless this is True (emulated bfloat16 is slower than float32).
        INFERENCE_DTYPE_FORCE=False,
        # Per-channel mean / std (in INPUT.FORMAT order, 0..255 pixel units) used to normalise.
        PIXEL_MEAN=[103.530, 116.280, 123.675],
        PIXEL_STD=[1.0, 1.0, 1.0],
        BACKBONE=dict(
            # Stages up to and including this one are frozen (0: nothing, 1: stem, 2: stem+res2).
            FREEZE_AT=2,
        ),
        RESNETS=dict(
            DEPTH=50,
            OUT_FEATURES=["res4"],
            # 1 is ResNet, > 1 is ResNeXt.
            NUM_GROUPS=1,
            # FrozenBN, BN, SyncBN or GN.
            NORM="FrozenBN",
            WIDTH_PER_GROUP=64,
            # MSRA models put the stride in the 1x1 conv; torchvision models in the 3x3.
            STRIDE_IN_1X1=True,
            RES5_DILATION=1,
            # Output channels of res2 (doubling per stage). ImageNet ResNet-18/34 use 64.
            RES2_OUT_CHANNELS=256,
            STEM_OUT_CHANNELS=64,
            # Zero-initialise the last norm of each residual branch (training from scratch).
            ZERO_INIT_RESIDUAL=False,
        ),
        FPN=dict(
            IN_FEATURES=[],
            OUT_CHANNELS=256,
            # "" (no norm) or GN / BN / SyncBN.
            NORM="",
            # "sum" or "avg" of the lateral and the upsampled top-down feature.
            FUSE_TYPE="sum",
            # The feature P6/P7 are computed from ("res5": C5 as in RetinaNet/FCOS, or "p5").
            BLOCK_IN_FEATURES="res5",
        ),
    ),
    INPUT=dict(
        FORMAT="BGR",
        AUG=dict(
            TRAIN_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(short_edge_length=(800,), max_size=1333, sample_style="choice"),
                ),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(short_edge_length=800, max_size=1333, sample_style="choice"),
                ),
            ],
        ),
    ),
    DATASETS=dict(
        TRAIN=(),
        TEST=(),
        # The generated "shapes_train" / "shapes_val" datasets, made on first use under
        # $CVPODS_DATASETS (default ./datasets)/shapes/: image counts, side length range in
        # pixels (each side drawn in [MIN_SIZE, MAX_SIZE]) and seed.
        SHAPES=dict(SHAPES_DEFAULTS),
        # Leave out (and count) missing/unreadable images and malformed annotations; else error.
        SKIP_BAD_DATA=False,
    ),
    DATALOADER=dict(
        NUM_WORKERS=2,
        # Batch images of similar aspect ratio together (less padding).
        ASPECT_RATIO_GROUPING=True,
        SAMPLER_TRAIN="TrainingSampler",
        # Drop training images that have no (valid) annotation.
        FILTER_EMPTY_ANNOTATIONS=True,
    ),
    SOLVER=dict(
        # WarmupMultiStepLR or WarmupCosineLR.
        LR_SCHEDULER_NAME="WarmupMultiStepLR",
        MAX_ITER=40000,
        STEPS=(30000,),
        GAMMA=0.1,
        WARMUP_FACTOR=1.0 / 1000,
        WARMUP_ITERS=1000,
        # "linear" or "constant".
        WARMUP_METHOD="linear",
        # "SGD" (with MOMENTUM; every release experiment) or "AdamW" (with BETAS).
        OPTIMIZER_NAME="SGD",
        BASE_LR=0.01,
        MOMENTUM=0.9,
        BETAS=(0.9, 0.999),
        WEIGHT_DECAY=1e-4,
        # Weight decay of normalisation layers' affine parameters.
        WEIGHT_DECAY_NORM=0.0,
        BIAS_LR_FACTOR=1.0,
        # Learning-rate factor of the spatial gates' parameters (gate convs). 1.0 in every
        # release experiment; the short CPU schedules of the shapes experiments raise it so that
        # the gates can close within a few hundred iterations (see README, "shapes results").
        GATE_LR_FACTOR=1.0,
        # False: the gates' learning rate keeps its post-warm-up value to the end (the schedule's
        # steps / cosine decay leave the gates' group alone). True in every release experiment.
        GATE_LR_DECAY=True,
        # Weight decay of biases; None: WEIGHT_DECAY (as in the release).
        WEIGHT_DECAY_BIAS=None,
        CLIP_GRADIENTS=dict(
            ENABLED=False,
            # "value": clamp each gradient element; "norm": clip each parameter's gradient norm
            # separately (the release's meaning); "full_model": clip the norm of all gradients
            # together.
            CLIP_TYPE="value",
            CLIP_VALUE=1.0,
            NORM_TYPE=2.0,
        ),
        # Mixed precision (CUDA only).
        AMP=dict(ENABLED=False),
        # Total images per iteration over all processes.
        IMS_PER_BATCH=16,
        # Images per process. When set (the official experiments: 2, with IMS_PER_BATCH 16 for 8
        # GPUs), the solver is scaled to the number of processes by the linear rule
        # (cvpods.configs.scaling.adjust_config); None: IMS_PER_BATCH is a fixed total batch.
        IMS_PER_DEVICE=None,
        # False keeps IMS_PER_BATCH (and the schedule) fixed even when IMS_PER_DEVICE is set.
        SCALE_WITH_WORLD_SIZE=True,
        CHECKPOINT_PERIOD=5000,
        # Keep this many periodic checkpoints (model_final.pth is always kept); 0 keeps all.
        CHECKPOINT_MAX_KEEP=0,
        # DistributedDataParallel's find_unused_parameters (needed when some parameters get no
        # gradient in some iterations).
        DDP_FIND_UNUSED_PARAMETERS=False,
    ),
    TEST=dict(
        # Evaluate every this many iterations during training (0: only at the end).
        EVAL_PERIOD=0,
        DETECTIONS_PER_IMAGE=100,
    ),
    # Relative paths are taken from the folder the launcher runs in (the experiment folder).
    OUTPUT_DIR="./log",
    # < 0: a random seed, logged; >= 0: a fixed seed.
    SEED=-1,
    CUDNN_BENCHMARK=False,
)


class BaseDetectionConfig(BaseConfig):
    """Defaults common to all detectors (backbone, input, data, solver, test, output)."""

    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(_DEFAULTS)
