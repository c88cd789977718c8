"""Ultralytics YOLO: a pruned model back in a `YOLO` object, fine-tuned by ultralytics' own trainer, saved as a
checkpoint that `YOLO(path)` reloads with the pruned shapes. Needs ultralytics (pip install 'graphprune[ultralytics]');
this module never imports it, it works on the `YOLO` object the caller holds.

    yolo = YOLO("yolov8n.yaml")
    result = graphprune.prune_graph(yolo.model.eval(), torch.rand(1, 3, 640, 640), ratio=0.5)
    yolo.model = result.module                         # predict(), val(), export() run the pruned DetectionModel
    yolo.train(data="data.yaml", trainer=keep_model(yolo))   # fine-tunes it as it is; last.pt/best.pt pickle it
    yolo.save("pruned.pt")                             # YOLO("pruned.pt") reloads the pruned shapes

Why a trainer: `YOLO.train` hands its trainer the model's yaml, and the trainer's `get_model` builds the dense
architecture from it (then copies the weights whose shapes still match, for a model loaded from a .pt): the pruning
is undone either way. A trainer whose `get_model` returns the pruned model itself is the customisation ultralytics
documents for a model of one's own.
"""
from __future__ import annotations

import torch

from ..errors import InputError


def classes(model: torch.nn.Module) -> int | None:
    """The class count of an ultralytics model's head (its last layer's `nc`: Detect, Segment, Pose...)."""
    layers = getattr(model, "model", None)
    return getattr(layers[-1], "nc", None) if isinstance(layers, torch.nn.Sequential) and len(layers) else None


def keep_model(yolo) -> type:
    """A subclass of `yolo`'s task trainer (DetectionTrainer for detection) whose `get_model` returns `yolo.model`,
    the module held now, unchanged in shape: for `yolo.train(..., trainer=keep_model(yolo))`.

    The dataset must have as many classes as the model detects: the head's class convs are part of the model."""
    base = yolo.task_map[yolo.task]["trainer"]
    model = yolo.model

    def get_model(self, cfg=None, weights=None, verbose=True):
        count = classes(model)
        if count is not None and self.data.get("nc") != count:
            raise InputError(f"the pruned {type(model).__name__} detects {count} classes but the dataset "
                             f"{self.args.data!r} has {self.data.get('nc')}: prune a model built for the dataset's "
                             "classes (YOLO('yolov8n.yaml') with nc: set in the yaml), then train it")
        return model

    return type(f"Kept{base.__name__}", (base,), {"get_model": get_model, "__module__": __name__,
                                                  "__doc__": f"{base.__name__} that trains the given model as it is."})
