"""Classify signals from their latents (``latents.safetensors``, e.g. ``encode functa``'s output).

The model (functa's choice: an MLP on the latents)::

    u = (z - mean) / std                      (per coordinate; train statistics, stored with the model)
    logits = Linear(ReLU(Dropout(Linear(... Linear(u)))))

trained by the training core on cross-entropy over random mini-batches (Adam, cosine decay).
``fit classifier LATENTS --out DIR`` writes the checkpoint and ``metrics.json`` (training
accuracy); ``eval classifier DIR LATENTS`` adds ``accuracy`` over every latent with a label, the
confusion matrix (``confusion[true][predicted]``) and the per-class accuracy to ``DIR/metrics.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import check
from fieldcraft.io.checkpoint import build_loaded, load_checkpoint
from fieldcraft.io.records import write_json
from fieldcraft.latents.store import latents_path, read_latents
from fieldcraft.train import Budget, Objective, OptimizerConfig, Run, ScheduleConfig

TASK = "classifier"


@dataclasses.dataclass(frozen=True)
class ClassifierNetConfig(Config):
    type_name = "LatentClassifierNet"
    dim: int = 64
    classes: int = 10
    width: int = 512
    layers: int = 2
    dropout: float = 0.3

    def build(self) -> LatentClassifier:
        check(self.layers >= 0 and self.width >= 1 and self.classes >= 2 and 0.0 <= self.dropout < 1.0,
              "classifier needs layers >= 0, width >= 1, classes >= 2 and dropout in [0, 1)")
        return LatentClassifier(self)


class LatentClassifier(nn.Module):
    """Standardisation (buffers ``mean``, ``std``) then an MLP with ReLU and dropout."""

    def __init__(self, config: ClassifierNetConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.dim] + [config.width] * config.layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(dims[-1], config.classes))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("mean", torch.zeros(config.dim))
        self.register_buffer("std", torch.ones(config.dim))

    @torch.no_grad()
    def set_statistics(self, z: Float[Tensor, "N dim"]) -> None:
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0).clamp_min(1e-6))

    def forward(self, z: Float[Tensor, "B dim"]) -> Float[Tensor, "B classes"]:
        return self.mlp((z - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, z: Float[Tensor, "N dim"], chunk: int = 4096) -> Tensor:
        self.eval()
        return torch.cat([self(z[i:i + chunk]).argmax(-1) for i in range(0, len(z), chunk)])


@dataclasses.dataclass(frozen=True)
class ClassifierFitConfig(Config):
    """- ``latents``: the training latents (file or ``encode functa`` directory; must hold labels).
    - ``width``, ``layers``, ``dropout``: the MLP. ``batch_size``, ``lr``, ``weight_decay``: Adam.
    - ``noise``: Gaussian noise added to the training latents, in units of each coordinate's standard
      deviation (augmentation; 0: none).
    - ``seed``: initialisation, batches and noise."""

    type_name = "ClassifierFit"
    latents: str = ""
    width: int = 512
    layers: int = 2
    dropout: float = 0.3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    noise: float = 0.7
    seed: int = 0

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.lr, weight_decay=self.weight_decay,
                               schedule=ScheduleConfig(kind="cosine", final_factor=0.0))


class CrossEntropy(Objective):
    def __init__(self, z: Tensor, labels: Tensor, config: ClassifierFitConfig) -> None:
        self.z, self.labels, self.config = z, labels, config
        self.generators = {"batches": torch.Generator().manual_seed(config.seed)}

    def loss(self, model: LatentClassifier, step: int) -> tuple[Tensor, dict[str, float]]:
        g = self.generators["batches"]
        idx = torch.randint(0, len(self.z), (self.config.batch_size,), generator=g).to(self.z.device)
        z = self.z[idx]
        if self.config.noise > 0:
            z = z + self.config.noise * model.std * torch.randn(z.shape, generator=g).to(z.device)
        logits = model(z)
        loss = nn.functional.cross_entropy(logits, self.labels[idx])
        return loss, {"accuracy": float((logits.argmax(-1) == self.labels[idx]).float().mean())}


def _labelled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    z, labels, _ = read_latents(path)
    check(labels is not None, f"{latents_path(path)}: the latents have no labels (the encoded source had none)")
    check(len(z) > 0, f"{latents_path(path)}: no latents")
    return z, labels


def fit_classifier(config: ClassifierFitConfig, out: Path, budget: Budget | None = None, *, resume: bool = False,
                   progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
                   overwrite: bool = False, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Train the classifier; write checkpoint, history.jsonl and metrics.json (``train_accuracy``) to ``out``.
    ``budget`` None: 4000 steps."""
    from fieldcraft.runtime import default_device

    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=Budget(steps=4000),
                   device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    z_np, labels_np = _labelled(config.latents)
    check(labels_np.min() >= 0, f"{config.latents}: labels must be >= 0")
    net = (Config.from_dict(run.meta["network"]) if run.resumed
           else ClassifierNetConfig(dim=z_np.shape[1], classes=max(2, int(labels_np.max()) + 1), width=config.width,
                                    layers=config.layers, dropout=config.dropout))
    check(net.dim == z_np.shape[1], f"{config.latents}: latents are {z_np.shape[1]}-d, the classifier's {net.dim}-d")
    z = torch.from_numpy(z_np).to(run.device)
    labels = torch.from_numpy(labels_np).to(run.device)
    torch.manual_seed(config.seed)
    model = net.build().to(run.device)
    model.set_statistics(z)
    trainer = run.trainer(model, CrossEntropy(z, labels, config), config.optimizer(),
                          meta={"network": net.to_dict(), "latents": str(config.latents)}, prefix="model",
                          log_every=20, checkpoint_seconds=checkpoint_seconds, progress=progress,
                          description="fit classifier")
    outcome = trainer.run()
    pred = model.predict(z)
    metrics = {"train_accuracy": float((pred == labels).float().mean()), "train_count": len(z), "steps": outcome.step,
               "fit_seconds": outcome.seconds, "classes": net.classes, "device": str(run.device),
               "stopped": outcome.stopped}
    write_json(run.out / "metrics.json", metrics)
    return metrics


def load_classifier(directory: Path, device: str | None = None) -> LatentClassifier:
    from fieldcraft.runtime import default_device

    tensors, meta = load_checkpoint(directory, device=device or default_device())
    check(meta.get("task") == TASK, f"{directory}: checkpoint is for task {meta.get('task')!r}, not classifier")
    model = build_loaded(Config.from_dict(meta["network"]).build, tensors, "model")
    model.eval()
    return model


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``[classes, classes]`` counts, row = true class, column = predicted class.

    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def eval_classifier(directory: Path, latents: str | Path, device: str | None = None) -> dict[str, Any]:
    """Accuracy of the classifier in ``directory`` over every labelled latent of ``latents``;
    merged into ``directory/metrics.json`` (and returned)."""
    import json

    model = load_classifier(directory, device)
    z_np, labels = _labelled(latents)
    check(z_np.shape[1] == model.config.dim,
          f"{latents_path(latents)}: latents are {z_np.shape[1]}-d, the classifier takes {model.config.dim}-d")
    dev = model.mean.device
    pred = model.predict(torch.from_numpy(z_np).to(dev)).cpu().numpy()
    classes = max(model.config.classes, int(labels.max()) + 1)
    conf = confusion_matrix(labels, pred, classes)
    per_class = {str(k): (float(conf[k, k] / conf[k].sum()) if conf[k].sum() else None) for k in range(classes)}
    result = {"accuracy": float((pred == labels).mean()), "count": int(len(labels)),
              "eval_latents": str(latents_path(latents)), "confusion": conf.tolist(),
              "confusion_definition": "confusion[true][predicted] counts", "per_class_accuracy": per_class}
    path = Path(directory) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics.update(result)
    write_json(path, metrics)
    return result
