"""Evaluation plots (matplotlib, Agg): confusion matrix, retrieval examples, t-SNE (PCA fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: str | Path) -> None:
    plt = _pyplot()
    num_classes = len(matrix)
    side = min(4 + 0.25 * num_classes, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(num_classes)
    if num_classes <= 60:
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_retrieval_examples(query_frames: list[np.ndarray], neighbour_frames: list[list[np.ndarray]],
                            query_labels: list[str], neighbour_labels: list[list[str]], path: str | Path) -> None:
    """One row per query: its middle frame, then its nearest neighbours' (green title = same class)."""
    plt = _pyplot()
    rows, cols = len(query_frames), 1 + max(len(n) for n in neighbour_frames)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(query_frames[r])
        axes[r, 0].set_title(f"query: {query_labels[r]}", fontsize=7)
        for c, (frame, label) in enumerate(zip(neighbour_frames[r], neighbour_labels[r]), start=1):
            axes[r, c].imshow(frame)
            axes[r, c].set_title(f"{c}: {label}", fontsize=7,
                                 color="green" if label == query_labels[r] else "red")
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D embedding for a scatter plot: t-SNE when scikit-learn is present (PCA otherwise, for < 5 points, and for
    features that are all alike)."""
    centred = features - features.mean(axis=0)
    spread = float(np.abs(centred).max()) if centred.size else 0.0
    # scikit-learn 1.9's Barnes-Hut t-SNE crashes the process (a segfault) on identical or vanishingly close points,
    # the features of a collapsed network; t-SNE does not depend on the scale, so it sees them scaled to 1.
    # (A NaN spread goes on to scikit-learn, which names non-finite input in its error.)
    if len(features) >= 5 and spread != 0:
        try:
            from sklearn.manifold import TSNE
            from threadpoolctl import threadpool_limits
            perplexity = float(min(30, (len(features) - 1) / 3))
            # Small sets run single-threaded: OpenMP threads spinning next to torch's took 100x longer.
            with threadpool_limits(1 if len(features) < 1000 else None, user_api="openmp"):
                return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
                    centred / spread), "t-SNE"
        except ImportError:
            pass
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T  # (N, <=2)
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1]))), "PCA"


def plot_embedding(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path,
                   title: str = "test features") -> str:
    """Scatter of a 2-D embedding coloured by class; returns the method used ("t-SNE" or "PCA")."""
    plt = _pyplot()
    points, method = embed_2d(features)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for c in np.unique(labels):
        mask = labels == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        ax.scatter(points[mask, 0], points[mask, 1], s=12, color=cmap(int(c) % cmap.N), label=name)
    if len(class_names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(f"{method} of {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return method
