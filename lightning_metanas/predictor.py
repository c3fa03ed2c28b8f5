"""Performance predictor: architecture encoding -> expected few-shot score.

Real scoring (adapting to validation tasks) is the expensive part of a generation; a small
MLP retrained on the archive screens a larger pool of offspring so only the promising ones are
scored. It is trusted only once the archive is big enough and its rank quality on held-out
entries (Kendall tau) is measured, so a predictor trained on noise never steers the search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lightning_metanas import seeding
from lightning_metanas.errors import require_int
from lightning_metanas.metrics import kendall_tau
from lightning_metanas.search_space import Architecture, SearchSpace


@dataclass
class PredictorConfig:
    """The performance predictor's settings (``--search.predictor.*``).

    Args:
        min_archive: scored architectures needed before the predictor may steer the search.
        min_tau: held-out Kendall tau it must reach to steer (it still trains below it).
        retrain_every: generations between retrainings.
        hidden: width of the MLP's hidden layers.
        epochs: full-batch Adam steps per (re)training.
        folds: cross-validation folds for the Kendall tau of its rank quality.
    """

    min_archive: int = 24
    min_tau: float = 0.2
    retrain_every: int = 1
    hidden: int = 64
    epochs: int = 200
    folds: int = 4

    def __post_init__(self) -> None:
        for name, minimum in (("min_archive", 4), ("retrain_every", 1), ("folds", 2)):
            require_int(f"search.predictor.{name}", getattr(self, name), minimum)


class PerformancePredictor:
    def __init__(self, space: SearchSpace, config: PredictorConfig, seed: int = 0) -> None:
        self.space, self.config, self.seed = space, config, seed
        self.model = self._new_model()
        self.mean, self.std = 0.0, 1.0
        self.trained_on = 0
        self.tau: Optional[float] = None

    def _new_model(self) -> nn.Module:
        h = self.config.hidden
        with seeding.torch_seeded(self.seed, "predictor"):  # no effect on the global RNG
            return nn.Sequential(
                nn.Linear(self.space.encoding_size, h), nn.ReLU(),
                nn.Linear(h, h), nn.ReLU(),
                nn.Linear(h, 1),
            )

    @property
    def ready(self) -> bool:
        return (
            self.trained_on >= self.config.min_archive
            and self.tau is not None
            and self.tau >= self.config.min_tau
        )

    def _features(self, archs: list[Architecture]) -> torch.Tensor:
        return torch.tensor([self.space.encode(a) for a in archs], dtype=torch.float32)

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        model = self._new_model()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        # Features are mostly exact zeros (one-hot), which drives Adam's moments into
        # denormal floats: measured 13.4 s per fit without flushing them, 0.3 s with.
        torch.set_flush_denormal(True)
        try:
            with torch.enable_grad():  # full-batch, so training is deterministic
                for _ in range(self.config.epochs):
                    optimiser.zero_grad()
                    nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
                    optimiser.step()
        finally:
            torch.set_flush_denormal(False)  # PyTorch's default
        return model

    def fit(self, archs: list[Architecture], scores: list[float]) -> Optional[float]:
        """Retrain on every scored architecture; return its rank quality, the Kendall tau
        between measured scores and out-of-fold predictions (``folds``-fold cross-validation
        over the whole archive, so each entry is predicted by a model that never saw it).
        None while the archive is too small to say anything."""
        if len(archs) < self.config.folds + 2:  # every fold predicts, and trains on >= 2
            return None
        x = self._features(archs)
        y = torch.tensor(scores, dtype=torch.float32)
        mean, std = float(y.mean()), float(y.std().clamp(min=1e-6))
        y = (y - mean) / std
        order = torch.randperm(len(archs), generator=seeding.torch_generator(self.seed, "folds", len(archs)))
        out_of_fold = torch.empty_like(y)
        for held in order.chunk(self.config.folds):
            kept = order[~torch.isin(order, held)]
            with torch.no_grad():
                out_of_fold[held] = self._train(x[kept], y[kept])(x[held]).squeeze(-1)
        self.tau = kendall_tau(out_of_fold, y)
        self.model = self._train(x, y)
        self.mean, self.std, self.trained_on = mean, std, len(archs)
        return self.tau

    @torch.no_grad()
    def predict(self, archs: list[Architecture]) -> list[float]:
        out = self.model(self._features(archs)).squeeze(-1) * self.std + self.mean
        return out.tolist()

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "mean": self.mean,
            "std": self.std,
            "trained_on": self.trained_on,
            "tau": self.tau,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.mean, self.std = state["mean"], state["std"]
        self.trained_on, self.tau = state["trained_on"], state["tau"]
