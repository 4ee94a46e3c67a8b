"""Checkpoints: saving / resuming training and loading weights of every supported format.

``DetectionCheckpointer(model, save_dir, optimizer=..., scheduler=...)`` saves and resumes runs and
is the single entry point for ``MODEL.WEIGHTS`` (project checkpoints, model-zoo files, torchvision
ResNets, Detectron/detectron2 ``.pkl``; local files or URLs). ``PeriodicCheckpointer`` saves on a
schedule. See docs/weights.md.
"""

from .detection_checkpoint import LAST_CHECKPOINT_FILE, DetectionCheckpointer, unwrap_model
from .file_io import DiskFullError, NotACheckpointError, load_checkpoint_file
from .model_loading import (
    DEFAULT_MIN_MATCHED_FRACTION,
    LoadReport,
    WeightsMismatchError,
    align_to_model,
    check_enough_matched,
    load_into_model,
)
from .periodic_checkpointer import PeriodicCheckpointer
from .safe_pickle import UnsafeCheckpointError, load_pickle_safely
from .url_cache import cache_dir, cached_path_of, resolve_weights_path
from .weight_formats import WeightsContent, parse_weights

__all__ = [
    "DEFAULT_MIN_MATCHED_FRACTION",
    "DetectionCheckpointer",
    "DiskFullError",
    "NotACheckpointError",
    "WeightsMismatchError",
    "check_enough_matched",
    "LAST_CHECKPOINT_FILE",
    "LoadReport",
    "PeriodicCheckpointer",
    "UnsafeCheckpointError",
    "WeightsContent",
    "align_to_model",
    "cache_dir",
    "cached_path_of",
    "load_checkpoint_file",
    "load_into_model",
    "load_pickle_safely",
    "parse_weights",
    "resolve_weights_path",
    "unwrap_model",
]
