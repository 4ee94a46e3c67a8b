"""Saving, loading and resuming detectors: :class:`DetectionCheckpointer`.

A checkpoint is ``{save_dir}/{name}.pth`` holding ``{"model": state_dict, <checkpointable>:
state_dict, ...extra}`` (e.g. ``optimizer``, ``scheduler``, ``iteration``), written atomically; the
text file ``{save_dir}/last_checkpoint`` names the newest one, so a restarted run can resume.

:meth:`DetectionCheckpointer.load` is also the one entry point for ``MODEL.WEIGHTS``: project
checkpoints, model-zoo files, bare state dicts, torchvision ResNets and Detectron/detectron2
``.pkl`` files, local or as URLs (see :mod:`cvpods.checkpoint.weight_formats` and
:mod:`cvpods.checkpoint.url_cache`). Nothing is ever unpickled beyond plain data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cvpods.utils import comm

from .conventions import config_disagreements, convention_of
from .file_io import (
    atomic_save,
    atomic_write_text,
    check_weights_only_loadable,
    load_checkpoint_file,
)
from .model_loading import LoadReport, align_to_model, check_enough_matched, load_into_model
from .url_cache import resolve_weights_path
from .weight_formats import WeightsContent, parse_weights

__all__ = ["DetectionCheckpointer", "LAST_CHECKPOINT_FILE", "unwrap_model"]

unwrap_model = comm.unwrap_model  # the one unwrap; kept here for ``cvpods.checkpoint`` users

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"


class DetectionCheckpointer:
    """Save / load a model and other objects with ``state_dict``/``load_state_dict`` (optimizer...).

    Args:
        model: the model (a DDP / DataParallel wrapper is unwrapped).
        save_dir: folder of the checkpoints and of the ``last_checkpoint`` file.
        save_to_disk: write files; in any case only the main process writes.
        cfg: the config the model was built from; if given, loading ImageNet weights whose input
            convention (MSRA vs torchvision) disagrees with it logs a warning.
        **checkpointables: objects saved and restored along with the model, by name.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool = True,
        cfg: Mapping | None = None,
        **checkpointables: Any,
    ) -> None:
        reserved = {"model"}
        for name, obj in checkpointables.items():
            if name in reserved:
                raise ValueError(f"checkpointable name {name!r} is reserved for the model weights")
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(
                    f"checkpointable {name!r} ({type(obj).__name__}) has no "
                    "state_dict()/load_state_dict()"
                )
        self.model = model
        self.save_dir = save_dir
        self.save_to_disk = bool(save_to_disk)
        self.cfg = cfg
        self.checkpointables: dict[str, Any] = dict(checkpointables)
        self.last_report: LoadReport | None = None

    # ------------------------------------------------------------------------------ saving
    def save(self, name: str, **extra: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` atomically and point ``last_checkpoint`` at it.

        ``extra`` entries (e.g. ``iteration=123``) are stored next to the state dicts. Everything
        must load with ``torch.load(weights_only=True)`` (tensors, plain containers, numbers,
        strings): otherwise ``TypeError`` naming the entry, and no file is written or replaced.
        Does nothing on non-main processes or with ``save_to_disk=False``.
        """
        if not self.writes_files():
            return
        if not self.save_dir:
            raise ValueError("DetectionCheckpointer.save needs a save_dir; none was given")
        clash = set(extra) & ({"model"} | set(self.checkpointables))
        if clash:
            raise ValueError(f"extra entries {sorted(clash)} clash with the saved state dicts")
        data: dict[str, Any] = {"model": comm.unwrap_model(self.model).state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(extra)
        filename = f"{name}.pth"
        path = os.path.join(self.save_dir, filename)
        where = f"checkpoint {filename}"
        atomic_save(data, path, verify=lambda tmp: check_weights_only_loadable(tmp, data, where))
        self.tag_last_checkpoint(filename)
        logger.info("Saved checkpoint %s", path)

    def writes_files(self) -> bool:
        """Whether :meth:`save` writes: ``save_to_disk`` and this is the main process."""
        return self.save_to_disk and comm.is_main_process()

    def tag_last_checkpoint(self, filename: str) -> None:
        """Record ``filename`` (relative to ``save_dir``) as the newest checkpoint."""
        atomic_write_text(filename, os.path.join(self.save_dir, LAST_CHECKPOINT_FILE))

    # ------------------------------------------------------------------------------ discovery
    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` has a ``last_checkpoint`` file."""
        return bool(self.save_dir) and os.path.isfile(
            os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        )

    def get_checkpoint_file(self) -> str:
        """The path of the newest checkpoint named by ``last_checkpoint`` ("" if there is none)."""
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        try:
            with open(tag) as f:
                filename = f.read().strip()
        except FileNotFoundError:
            return ""
        if not filename:
            raise ValueError(f"{tag} is empty; expected the file name of the newest checkpoint")
        return os.path.join(self.save_dir, filename)

    def get_all_checkpoint_files(self) -> list[str]:
        """Every ``.pth`` file in ``save_dir``, sorted by name."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        return sorted(
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and os.path.isfile(os.path.join(self.save_dir, f))
        )

    # ------------------------------------------------------------------------------ loading
    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``save_dir`` (model + all checkpointables) if asked and possible, else
        load only the model weights from ``path``. Returns the checkpoint's other entries."""
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[])

    def load(
        self,
        path: str,
        checkpointables: list[str] | None = None,
        *,
        min_matched_fraction: float | None = None,
    ) -> dict[str, Any]:
        """Load model weights from ``path`` (a file or URL in any supported format) and the named
        checkpointables found in it (all of them when ``None``).

        Args:
            path: the weights file or URL ("" loads nothing).
            checkpointables: names of the checkpointables to restore (None: all found).
            min_matched_fraction: if given, raise :class:`WeightsMismatchError` (with a table of
                what matched per module) when less than this share of the model's tensors was
                loaded: evaluating a checkpoint of another architecture is an error, not AP 0.
                Training from a backbone-only file passes None.

        Returns:
            The file's remaining entries (e.g. ``{"iteration": 123}``); ``{}`` for an empty path.
        """
        if not path:
            logger.info("No weights to load (empty path): the model keeps its initialisation.")
            return {}
        names = list(self.checkpointables) if checkpointables is None else list(checkpointables)
        unknown = [n for n in names if n not in self.checkpointables]
        if unknown:
            raise KeyError(
                f"unknown checkpointables {unknown}; this checkpointer has "
                f"{sorted(self.checkpointables)}"
            )
        local = resolve_weights_path(path)
        logger.info("Loading weights from %s%s", path, "" if local == path else f" ({local})")
        content = parse_weights(load_checkpoint_file(local), source=local)
        self._warn_on_convention_mismatch(content, path)
        self.last_report = self._load_model(content, source=path)
        if min_matched_fraction is not None:
            check_enough_matched(self.last_report, path, min_matched_fraction)
        remaining = content.extra
        for name in names:
            if name in remaining:
                logger.info("Loading %s state from %s", name, path)
                self.checkpointables[name].load_state_dict(remaining.pop(name))
            elif checkpointables is not None:  # asked for by name: worth a warning
                logger.warning("%s has no %r entry; %s is left as it is", path, name, name)
        return remaining

    def _load_model(self, content: WeightsContent, source: str) -> LoadReport:
        model = comm.unwrap_model(self.model)
        target = model.state_dict()
        aligned, renaming = align_to_model(content.state_dict, target.keys())
        if content.affine_norms:
            _make_affine_norms_exact(model, aligned, content.affine_norms)
        return load_into_model(model, aligned, source=source, renaming=renaming)

    def _warn_on_convention_mismatch(self, content: WeightsContent, source: str) -> None:
        convention = convention_of(content.naming, content.author)
        if convention is None:
            return
        if self.cfg is None:
            logger.info(
                "%s holds %s-style ImageNet weights (%s names)", source, convention, content.naming
            )
            return
        problems = config_disagreements(self.cfg, convention)
        if problems:
            logger.warning(
                "%s holds %s-style weights but the config disagrees (see docs/weights.md); the "
                "backbone features will be off:\n  %s",
                source,
                convention,
                "\n  ".join(problems),
            )


def _make_affine_norms_exact(
    model: nn.Module, state_dict: dict[str, torch.Tensor], affine_norms: list[str]
) -> None:
    """Caffe2 affine channels: make ``(x - mean) / sqrt(var + eps) * w + b`` exactly ``x * w + b``.

    The converter gives these norms ``running_mean`` 0 and ``running_var`` 1; a norm module with an
    ``eps`` (torchvision's ``FrozenBatchNorm2d`` adds it to the variance) gets ``1 - eps`` instead.
    ``affine_norms`` are the converted (un-prefixed) names; ``state_dict`` is already aligned.
    """
    modules = dict(model.named_modules())
    norms = set(affine_norms)
    for key in state_dict:
        if not key.endswith(".running_var"):
            continue
        module_name = key[: -len(".running_var")]
        parts = module_name.split(".")
        if any(".".join(parts[i:]) in norms for i in range(len(parts))):
            eps = float(getattr(modules.get(module_name), "eps", 0.0) or 0.0)
            state_dict[key] = torch.full_like(state_dict[key], 1.0 - eps)
