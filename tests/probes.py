"""A test-only callback: each rank writes what it holds after every generation, so a test can
compare ranks of a DDP run (rank 1's state never reaches the parent process otherwise)."""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class RankStateDump(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from callbacks.evolution import EvolutionCallback

        search = next(c for c in trainer.callbacks if isinstance(c, EvolutionCallback)).search
        weights = sum(float(p.double().abs().sum()) for p in pl_module.parameters())
        state = {
            "population": [[m.arch.to_dict(), m.score] for m in search.population],
            "archive_size": len(search.archive),
            "weights_l1": weights,
            "first_support_images_sum": getattr(pl_module, "probe_images_sum", None),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(state))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # a fingerprint of this rank's first tasks of the epoch
            pl_module.probe_images_sum = float(batch[0].double().sum())
