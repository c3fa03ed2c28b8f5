"""How the adapted model does on the held-out images, class by class: per-class recall and the
confusion matrix, printed compactly and drawn next to the saved model.

One accuracy hides what an on-site user most needs to know: whether the rare class (the
defect) is recognised at all. With four classes of one image and one of ten, plain fine-tuning
gets the well-stocked class right and the others a quarter of the time; the per-class recall
shows it, the confusion matrix shows where the rare images go.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[true, predicted]`` counts."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def recall_per_class(matrix: torch.Tensor) -> list[float]:
    """Per true class, the share predicted right (NaN for a class without held-out images)."""
    totals = matrix.sum(1).double()
    return (matrix.diagonal().double() / totals).tolist()


def balanced_accuracy(matrix: torch.Tensor) -> float:
    """Mean per-class recall over the classes with held-out images."""
    recall = torch.tensor(recall_per_class(matrix))
    return float(recall[~recall.isnan()].mean())


def lines(matrix: torch.Tensor, class_names: Sequence[str]) -> list[str]:
    """Per-class recall on one line, then the matrix (rows: true class, columns: predicted, in
    the same order), one row a line."""
    recall = recall_per_class(matrix)
    out = ["held-out recall per class: " + ", ".join(
        f"{name} {100 * r:.0f}% ({int(matrix[i, i])}/{int(matrix[i].sum())})"
        for i, (name, r) in enumerate(zip(class_names, recall)))]
    width = max(len(str(int(matrix.max()))), 2)
    label = max(len(n) for n in class_names)
    out.append(f"confusion (rows: true class; columns: predicted, same order; balanced accuracy "
               f"{100 * balanced_accuracy(matrix):.2f}%):")
    out += [f"  {name:>{label}} " + " ".join(f"{int(v):>{width}}" for v in row)
            for name, row in zip(class_names, matrix.tolist())]
    return out


def short_label(name: str, width: int = 24) -> str:
    """A class name cut to ``width`` characters in the middle, where folder names such as
    ``0003-images_evaluation--Malayalam--character39`` repeat least (their start and end differ)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def plot_confusion(matrix: torch.Tensor, class_names: Sequence[str], path: str | Path) -> Path:
    """The matrix as a PNG (rows normalised to recall, counts written in each cell); long class
    names are cut in the middle and the figure widened for them, so the axes always fit."""
    n = len(class_names)
    class_names = [short_label(c) for c in class_names]
    margin = 0.06 * max(len(c) for c in class_names)  # inches for 7-point tick labels
    fig = Figure(figsize=(1.2 + margin + 0.45 * n, 1.0 + margin + 0.45 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    share = (matrix.double() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    ax.set_title("held-out images", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
