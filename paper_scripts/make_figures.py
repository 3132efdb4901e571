"""Figures for the README: the demo's feature distributions and retrieval examples, and a method diagram.

    python paper_scripts/make_figures.py --output-root output --data-root data --out-dir asset

Reads, for each run of --runs (default: random weights, the SimCLR `clip` baseline and DualVar, where
paper_scripts/common.sh's run_demo writes them), RUN/retrieval.json and RUN/features_{train,test}.npz
as retrieve.py writes them, plus the frames and ClassInd.txt under DATA_ROOT/<dataset>/. Writes:

- demo_feature_distribution.png  one 2-D embedding (t-SNE, PCA fallback) of the test features per run,
                                 coloured by class, each panel titled with the run's R@1
- demo_retrieval.png             the first test video of each of the first classes, with its top-5 train
                                 neighbours (first, middle and last frame); green border = same class
- method_overview.png            DualVar (METHOD.md §5) and IIC (§6), drawn with matplotlib; needs no run

Runs that were not made are left out of the figures, with a note naming the command that makes them. Every figure is a pure function of its inputs (fixed seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(REPO))

from dataset.layout import LayoutError, count_frames, frame_name, read_class_index  # noqa: E402

FIGURES = {"distribution": "demo_feature_distribution.png", "retrieval": "demo_retrieval.png",
           "overview": "method_overview.png"}
DEFAULT_RUNS = ("random init=demo/random/seed0/test_retrieval",
                "SimCLR clip baseline=demo/simclr/seed0/test_retrieval",
                "DualVar=demo/dualvar/seed0/test_retrieval")
# the command that makes each default run (paper_scripts/common.sh's run_miniature writes it)
MAKES = {"demo/random/seed0/test_retrieval": "bash paper_scripts/run/demo.sh",
         "demo/simclr/seed0/test_retrieval": "bash paper_scripts/run/demo_baseline.sh",
         "demo/dualvar/seed0/test_retrieval": "bash paper_scripts/run/demo.sh"}
FEATURE_KEYS = ("features", "labels", "video_ids")
WIDTH_INCHES, DPI = 14.0, 100  # 1400 px: the README's width
QUERY_COLOUR, HIT_COLOUR, MISS_COLOUR = "#1f3b73", "#1a9641", "#d7191c"


class FigureError(Exception):
    """An input the figures need is missing or unusable; the message names it and the fix."""


# ---------------------------------------------------------------- inputs

def parse_run(spec: str) -> tuple[str, str]:
    name, sep, folder = spec.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=DIR, e.g. 'DualVar=demo/dualvar/seed0/test_retrieval'")
    return name.strip(), folder.strip()


def run_folders(runs: list[tuple[str, str]], output_root: Path) -> list[tuple[str, Path]]:
    """(name, folder) per run; a relative folder is relative to the output root."""
    return [(name, Path(folder) if Path(folder).is_absolute() else output_root / folder) for name, folder in runs]


def making_command(folder: Path, output_root: Path) -> str:
    """The command that makes the retrieval run in ``folder``: its demo script, else retrieve.py."""
    try:
        relative = folder.relative_to(output_root).as_posix()
    except ValueError:
        relative = None
    return MAKES.get(relative) or f"python retrieve.py --ckpt CHECKPOINT ... --output-dir {folder}"


def completed_runs(folders: list[tuple[str, Path]], output_root: Path) -> list[tuple[str, Path]]:
    """The runs whose retrieval.json exists (retrieve.py writes it last); prints a note for the others."""
    found = []
    for name, folder in folders:
        if (folder / "retrieval.json").is_file():
            found.append((name, folder))
        else:
            print(f"note: the figures omit run '{name}', which was not made (no {folder / 'retrieval.json'}); "
                  f"to include it, make it with: {making_command(folder, output_root)}", flush=True)
    if not found:
        expected = ", ".join(str(folder) for _, folder in folders)
        raise FigureError(f"no retrieval run found: expected retrieval.json in one of {expected}; run retrieve.py "
                          "(e.g. bash paper_scripts/run/demo.sh) or pass --output-root / --runs NAME=DIR")
    return found


def read_recall(folder: Path, k: int = 1) -> float:
    path = folder / "retrieval.json"
    try:
        value = json.loads(path.read_text()).get(f"R@{k}")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise FigureError(f"{path}: not a JSON object of retrieve.py ({error}); re-run retrieve.py") from error
    if not isinstance(value, (int, float)):
        raise FigureError(f"{path}: no number under 'R@{k}' (found {value!r}); re-run retrieve.py")
    return float(value)


def read_features(path: Path) -> dict[str, np.ndarray]:
    """retrieve.py's features_{train,test}.npz: features (N, D) float, labels (N,) int, video_ids (N,)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in FEATURE_KEYS if key in data}
    except (OSError, ValueError) as error:
        raise FigureError(f"{path}: cannot read it as retrieve.py's features ({error}); re-run retrieve.py") from error
    missing = [key for key in FEATURE_KEYS if key not in arrays]
    if missing:
        raise FigureError(f"{path}: no {', '.join(missing)} in the file; re-run retrieve.py")
    features, labels, ids = arrays["features"], arrays["labels"], arrays["video_ids"]
    if (features.ndim != 2 or len(features) == 0 or not np.issubdtype(features.dtype, np.floating)
            or labels.shape != (len(features),) or ids.shape != labels.shape):
        raise FigureError(f"{path}: expected float features (N, D), labels (N,) and video_ids (N,) with N > 0, got "
                          f"{features.shape}, {labels.shape} and {ids.shape}; re-run retrieve.py")
    # The features keep their stored precision so that near-ties rank exactly as in retrieve.py.
    return {"features": features, "labels": labels.astype(np.int64), "video_ids": ids.astype(str)}


def check_labels(labels: np.ndarray, class_names: list[str], path: Path, class_index: Path) -> None:
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise FigureError(f"{path}: labels span {labels.min()}..{labels.max()} but {class_index} lists "
                          f"{len(class_names)} classes; pass the --data-root / --dataset the run was made with")


# ---------------------------------------------------------------- selection

def example_queries(labels: np.ndarray, count: int) -> np.ndarray:
    """The first test row of each of the ``count`` lowest classes present: one query per class."""
    classes = np.unique(labels)[:count]
    return np.array([np.flatnonzero(labels == c)[0] for c in classes], dtype=np.int64)


def select_examples(test: dict, train: dict, count: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Query rows (Q,) and their k nearest train rows (Q, k), ranked as retrieve.py ranks them."""
    from evaluation.metrics import centre_and_normalise, nearest_neighbours

    rows = example_queries(test["labels"], count)
    # Centre on the whole test set's mean, as retrieve.py does, and only then pick the queries.
    queries = centre_and_normalise(test["features"])[rows]  # (Q, D)
    neighbours = nearest_neighbours(queries, centre_and_normalise(train["features"]), k)
    return rows, neighbours


# ---------------------------------------------------------------- figures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def class_colours(num_classes: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    return [cmap(c % cmap.N) for c in range(num_classes)]


def plot_feature_distribution(runs: list[tuple[str, Path]], class_names: list[str], class_index: Path,
                              path: Path, seed: int) -> list[str]:
    """One embedding panel per run, one shared legend; returns the 2-D methods used per panel."""
    from evaluation.metrics import centre_and_normalise
    from evaluation.plots import embed_2d

    plt = _pyplot()
    from matplotlib.lines import Line2D

    colours = class_colours(len(class_names))
    side = min(WIDTH_INCHES / len(runs), 5.0)  # square panels, at most 500 px high
    legend_height = 0.3 * -(-len(class_names) // 5) + 0.15  # inches: five classes per legend row
    height = side + 0.9 + legend_height  # panel, titles, legend
    fig, axes = plt.subplots(1, len(runs), figsize=(WIDTH_INCHES, height), squeeze=False)
    methods = []
    for ax, (name, folder) in zip(axes[0], runs):
        test = read_features(folder / "features_test.npz")
        check_labels(test["labels"], class_names, folder / "features_test.npz", class_index)
        points, method = embed_2d(centre_and_normalise(test["features"]), seed=seed)  # (N, 2)
        methods.append(method)
        ax.scatter(points[:, 0], points[:, 1], s=18, c=[colours[c] for c in test["labels"]], linewidths=0)
        ax.set_title(f"{name}\nR@1 {read_recall(folder):.1f}%  ({method})", fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, markersize=8) for colour in colours]
    fig.legend(handles, class_names, loc="lower center", ncol=min(len(class_names), 5), fontsize=10, frameon=False)
    fig.suptitle("Test-set video features (centred, L2-normalised), coloured by class", fontsize=13)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return methods


def read_frame(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FigureError(f"cannot read frame {path}: missing or not a JPEG; re-extract the frames "
                          "(process_data/src/extract_frame.py) or pass the right --data-root")
    return image[:, :, ::-1]  # BGR -> RGB


def tile(frame_root: Path, video_id: str, strip: bool) -> np.ndarray:
    """(H, W', 3) uint8: the video's middle frame, or its first, middle and last frames side by side."""
    folder = Path(video_id) if Path(video_id).is_absolute() else frame_root / video_id
    num_frames = count_frames(folder)
    if num_frames == 0:
        raise FigureError(f"no frames in {folder}: pass the --data-root (and --dataset) that retrieve.py used")
    positions = [0, num_frames // 2, num_frames - 1] if strip else [num_frames // 2]
    frames = [read_frame(folder / frame_name(i)) for i in positions]
    gap = np.full((frames[0].shape[0], max(2, frames[0].shape[1] // 25), 3), 255, np.uint8)
    parts = [part for frame in frames for part in (frame, gap)][:-1]
    return np.concatenate(parts, axis=1)


def plot_retrieval_grid(name: str, folder: Path, class_names: list[str], class_index: Path, frame_root: Path,
                        path: Path, num_queries: int, num_neighbours: int, strip: bool) -> None:
    test, train = read_features(folder / "features_test.npz"), read_features(folder / "features_train.npz")
    for split, data in (("test", test), ("train", train)):
        check_labels(data["labels"], class_names, folder / f"features_{split}.npz", class_index)
    rows, neighbours = select_examples(test, train, num_queries, num_neighbours)
    plt = _pyplot()
    tiles = [[tile(frame_root, test["video_ids"][q], strip)] +
             [tile(frame_root, train["video_ids"][g], strip) for g in neighbours[r]] for r, q in enumerate(rows)]
    columns = 1 + neighbours.shape[1]
    # Exact geometry instead of tight_layout: image axes keep their aspect, so rows would float apart.
    margin, gap, caption_height, header = 0.08, 0.12, 0.32, 0.75  # inches
    tile_width = (WIDTH_INCHES - 2 * margin - gap * (columns - 1)) / columns
    tile_height = tile_width * tiles[0][0].shape[0] / tiles[0][0].shape[1]
    height = header + len(rows) * (caption_height + tile_height) + margin
    fig, axes = plt.subplots(len(rows), columns, figsize=(WIDTH_INCHES, height), squeeze=False)
    fig.subplots_adjust(left=margin / WIDTH_INCHES, right=1 - margin / WIDTH_INCHES, bottom=margin / height,
                        top=1 - (header + caption_height) / height, wspace=gap / tile_width,
                        hspace=caption_height / tile_height)
    for r, q in enumerate(rows):
        query_class = test["labels"][q]
        for c, image in enumerate(tiles[r]):
            ax = axes[r, c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                colour, caption = QUERY_COLOUR, f"query: {class_names[query_class]}"
            else:
                neighbour_class = train["labels"][neighbours[r, c - 1]]
                colour = HIT_COLOUR if neighbour_class == query_class else MISS_COLOUR
                caption = f"{c}: {class_names[neighbour_class]}"
            ax.set_title(caption, fontsize=10, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
    frames = "first | middle | last frame" if strip else "middle frame"
    fig.suptitle(f"{name} (R@1 {read_recall(folder):.1f}%): test queries (left) and their {neighbours.shape[1]} "
                 f"nearest train videos by cosine similarity\neach tile: {frames}; green: same class as the "
                 "query, red: another class", fontsize=12, y=1 - 0.08 / height, va="top")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


class Diagram:
    """Boxes, clip strips and arrows on one axes whose units are inches (so font sizes and gaps agree)."""

    def __init__(self, ax):
        self.ax = ax

    def box(self, x, y, w, h, text, face="#f4f4f4", edge="#555555", size=10, weight="normal"):
        from matplotlib.patches import FancyBboxPatch

        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                         facecolor=face, edgecolor=edge, linewidth=1.2))
        self.ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight,
                     linespacing=1.35)

    def clip(self, x, y, colours, label, marks=None, w=2.1, h=0.36):
        """A strip of frames (one rectangle per colour), its label above and an optional mark on each frame."""
        from matplotlib.patches import Rectangle

        step = w / len(colours)
        for i, colour in enumerate(colours):
            self.ax.add_patch(Rectangle((x + i * step, y), step * 0.86, h, facecolor=colour, edgecolor="#333333",
                                        linewidth=0.6))
            if marks and marks[i]:
                self.ax.text(x + (i + 0.43) * step, y + h / 2, marks[i], ha="center", va="center", fontsize=10,
                             weight="bold", color="white")
        self.ax.text(x, y + h + 0.08, label, ha="left", va="bottom", fontsize=10)

    def arrow(self, start, end, text=None, style="-|>", dashed=False, text_offset=(0.0, 0.12), size=9, rad=0.0):
        from matplotlib.patches import FancyArrowPatch

        self.ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color="#333333",
                                          linewidth=1.2, linestyle="--" if dashed else "-",
                                          connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
        if text:
            mid = ((start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1])
            self.ax.text(*mid, text, ha="center", va="bottom", fontsize=size, color="#333333",
                         bbox=dict(facecolor="white", edgecolor="none", pad=0.5))

    def title(self, x, y, text):
        self.ax.text(x, y, text, ha="left", va="center", fontsize=13, weight="bold")


def plot_method_overview(path: Path) -> None:
    """DualVar (METHOD.md §5) above IIC (§6), left to right: video, clips, encoder, heads or banks, losses."""
    plt = _pyplot()
    height = 9.9
    fig = plt.figure(figsize=(WIDTH_INCHES, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH_INCHES)
    ax.set_ylim(0, height)
    ax.axis("off")
    d = Diagram(ax)
    encoder_face, head_face, loss_face, video_face = "#dfe8f5", "#e6f2e1", "#fbeede", "#eeeeee"
    clip_x, encoder_x, head_x, loss_x = 1.95, 4.5, 6.75, 9.75  # column starts
    encoder_w, head_w, loss_w = 1.4, 2.2, 4.05
    blue, orange, purple = "#4a78b5", "#e08a3c", "#8c6bb1"
    early, late = "#8db3e2", "#24508f"  # A's two temporal segments

    # DualVar: three views of a video, one encoder, two heads, three losses
    d.title(0.25, 9.6, "DualVar: inter-intra variant dual representations (BMVC 2021)")
    d.box(0.25, 6.95, 1.1, 1.0, "video", face=video_face, size=11)
    d.clip(clip_x, 8.55, [blue] * 6, "clip A (16 frames, stride 4)")
    d.clip(clip_x, 7.55, [orange] * 6, "clip B (another time, own aug.)")
    d.clip(clip_x, 6.55, [early] * 3 + [late] * 3, "clip A′ (A's frames, new aug.)", ["", "1", "", "", "2", ""])
    d.clip(clip_x, 4.95, [late] * 3 + [early] * 3, "shuffled A′ (permutation σ)", ["", "2", "", "", "1", ""])
    d.arrow((1.35, 7.65), (1.9, 8.7))
    d.arrow((1.35, 7.45), (1.9, 7.7))
    d.arrow((1.35, 7.25), (1.9, 6.75), dashed=True)
    d.arrow((2.9, 6.5), (2.9, 5.62))
    ax.text(3.02, 6.06, "split into n = 2\nsegments, shuffle", ha="left", va="center", fontsize=9, color="#333333")
    clip_rows = (8.73, 7.73, 6.73, 5.13)
    d.box(encoder_x, 4.8, encoder_w, 4.25, "shared\nencoder\n(R(2+1)D,\nR3D, C3D,\nS3D)\n\npooled\nfeature\nh ∈ ℝᶜ",
          face=encoder_face, size=11)
    for y in clip_rows:
        d.arrow((clip_x + 2.15, y), (encoder_x, y))
    d.box(head_x, 7.55, head_w, 1.2, "clip head\nMLP C→C→128\nz = normalize(·)", face=head_face)
    d.box(head_x, 5.15, head_w, 1.5, "series head\nMLP C→C→n·d\ns: n vectors of d dims,\neach L2-normalised",
          face=head_face)
    d.arrow((encoder_x + encoder_w, 8.15), (head_x, 8.15), "A, B", size=9)
    d.arrow((encoder_x + encoder_w, 5.9), (head_x, 5.9), "all four", size=9)
    d.box(loss_x, 8.0, loss_w, 1.0, "clip contrast  L_clip   (z(A) ↔ z(B))\nSimCLR: NT-Xent over the 2N clips, τ 0.07\n"
                                   "MoCo: momentum encoder + queue of 16384 keys", face=loss_face)
    d.box(loss_x, 6.5, loss_w, 1.15, "temporal coherent contrast  L_TC\n(inter-variance) S(x, y) = mean of s(x) ·\n"
                                    "mean of s(y); positives A ↔ B, τ 0.07", face=loss_face)
    d.box(loss_x, 4.65, loss_w, 1.5, "shuffle-rank  L_SR  (intra-variance)\ncalibrate: p[σ(j)] = s_j(shuffled A′)\n"
                                    "rank p against s(A) and s(A′): segment j\nnearer its own than any other segment",
          face=loss_face)
    d.arrow((head_x + head_w, 8.3), (loss_x, 8.5), "z", size=10)
    d.arrow((head_x + head_w, 6.3), (loss_x, 7.0), "s", size=10, text_offset=(-0.1, 0.05))
    d.arrow((head_x + head_w, 5.6), (loss_x, 5.4), "s", size=10)
    ax.text(WIDTH_INCHES / 2, 4.2, "L = w_clip·L_clip + w_tc·L_TC + w_sr·L_SR     "
            "(modes: clip = baseline, clip-sr, clip-tc, clip-sr-tc = full DualVar)", ha="center", va="center",
            fontsize=11)
    ax.plot([0.25, WIDTH_INCHES - 0.25], [3.85, 3.85], color="#999999", linewidth=1)

    # IIC: an RGB clip, a view derived from it and intra-negatives, one encoder, memory banks
    d.title(0.25, 3.5, "IIC: inter-intra contrastive framework (ACM MM 2020)")
    d.box(0.25, 1.45, 1.1, 1.0, "video", face=video_face, size=11)
    chunks = ["#b9d0ee", "#8db3e2", "#4a78b5", "#24508f"]
    d.clip(clip_x, 2.6, [blue] * 8, "view 1: RGB clip (16 frames)")
    d.clip(clip_x, 1.5, [purple] * 8, "view 2: residual (or flow u/v)")
    d.clip(clip_x, 0.35, [chunks[0]] * 2 + [chunks[2]] * 2 + [chunks[1]] * 2 + [chunks[3]] * 2,
           "intra-negative: repeat or shuffle", ["1", "1", "3", "3", "2", "2", "4", "4"])
    d.arrow((1.35, 2.1), (1.9, 2.78))
    d.arrow((1.35, 1.9), (1.9, 1.68), dashed=True)
    d.arrow((1.35, 1.7), (1.9, 0.55), dashed=True)
    ax.text(0.25, 1.2, "(dashed: made from\nview 1's frames)", ha="left", va="top", fontsize=9, color="#333333")
    d.box(encoder_x, 0.25, encoder_w, 2.9, "shared\nencoder\n(no projection\nhead)\n\n512-d pooled\nfeature f",
          face=encoder_face, size=11)
    for y in (2.78, 1.68, 0.53):
        d.arrow((clip_x + 2.15, y), (encoder_x, y))
    d.box(head_x, 0.25, head_w, 2.9, "memory banks\nM1, M2, Mneg\n(one row per video,\nmomentum 0.5,\n"
                                    "renormalised)\n\nthe intra-negative\nfeature only updates\nMneg (no gradient)",
          face=head_face)
    d.arrow((encoder_x + encoder_w, 2.4), (head_x, 2.4), "f1", size=9)
    d.arrow((encoder_x + encoder_w, 1.68), (head_x, 1.68), "f2", size=9)
    d.arrow((encoder_x + encoder_w, 0.8), (head_x, 0.8), "fneg", size=9)
    d.box(loss_x, 1.85, loss_w, 1.3, "view 1: f1 · [M2 rows, Mneg rows] / 0.07\nown M2 row = positive; other videos\n"
                                    "(inter) and intra-negatives = negatives", face=loss_face)
    d.box(loss_x, 0.25, loss_w, 1.3, "view 2: f2 · [M1 rows, Mneg rows] / 0.07\n(2K+2)-way softmax in each view, K = 1024\n"
                                    "L = CE(view 1) + CE(view 2)", face=loss_face)
    d.arrow((head_x + head_w, 2.2), (loss_x, 2.5))
    d.arrow((head_x + head_w, 1.1), (loss_x, 0.9))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ---------------------------------------------------------------- entry point

def default_root(variable: str, folder: str) -> Path:
    return Path(os.environ.get(variable) or REPO / folder)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-root", type=Path, default=default_root("OUTPUT_ROOT", "output"),
                        help="the launchers' OUTPUT_ROOT (default: $OUTPUT_ROOT, else <repo>/output)")
    parser.add_argument("--data-root", type=Path, default=default_root("VSSL_DATA_ROOT", "data"),
                        help="holds <dataset>/frames and <dataset>/csv/ClassInd.txt "
                             "(default: $VSSL_DATA_ROOT, else <repo>/data)")
    parser.add_argument("--dataset", default="demo",
                        help="the data set the runs retrieved on, a folder of --data-root (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "asset",
                        help="where the PNGs are written (default: <repo>/asset)")
    parser.add_argument("--runs", nargs="+", type=parse_run, default=None, metavar="NAME=DIR",
                        help="retrieve.py output folders (relative to --output-root) and their panel titles, in "
                             "panel order; missing ones are skipped (default: " + " ".join(
                                 f"'{spec}'" for spec in DEFAULT_RUNS) + ")")
    parser.add_argument("--retrieval-run", default=None, metavar="NAME",
                        help="the run of --runs whose neighbours demo_retrieval.png shows (default: the last one "
                             "found, DualVar with the default --runs)")
    parser.add_argument("--prefix", default="",
                        help="prepended to every file name, e.g. 'iic_' for the IIC demo's figures")
    parser.add_argument("--figures", nargs="+", choices=list(FIGURES), default=list(FIGURES),
                        help="which figures to draw; overview needs no run (default: all)")
    parser.add_argument("--num-queries", type=int, default=6,
                        help="queries in demo_retrieval.png: the first test video of each of the first classes "
                             "(default: %(default)s)")
    parser.add_argument("--num-neighbours", type=int, default=5,
                        help="train neighbours shown per query (default: %(default)s)")
    parser.add_argument("--middle-frame-only", action="store_true",
                        help="one middle frame per tile instead of the first, middle and last frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE embedding (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be read and written as JSON, and exit without drawing")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Draw the figures; returns what was read and written (the --dry-run JSON, for a dry run)."""
    args = get_args_parser().parse_args(argv)
    for flag in ("num_queries", "num_neighbours"):
        if getattr(args, flag) < 1:
            raise FigureError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    args.runs = args.runs or [parse_run(spec) for spec in DEFAULT_RUNS]
    names = [name for name, _ in args.runs]
    if len(set(names)) != len(names):
        raise FigureError(f"--runs: every NAME must be different, got {', '.join(names)}")
    if args.retrieval_run is not None and args.retrieval_run not in names:
        raise FigureError(f"--retrieval-run {args.retrieval_run!r} is not a run of --runs ({', '.join(names)})")
    dataset_root = args.data_root / args.dataset
    class_index, frame_root = dataset_root / "csv" / "ClassInd.txt", dataset_root / "frames"
    needs_runs = {"distribution", "retrieval"} & set(args.figures)
    runs = completed_runs(run_folders(args.runs, args.output_root), args.output_root) if needs_runs else []
    retrieval_run = None
    if "retrieval" in args.figures:
        found = dict(runs)
        if args.retrieval_run is not None and args.retrieval_run not in found:
            raise FigureError(f"--retrieval-run {args.retrieval_run!r}: its run folder has no retrieval.json")
        retrieval_run = args.retrieval_run or runs[-1][0]
    writes = {figure: args.out_dir / f"{args.prefix}{FIGURES[figure]}" for figure in args.figures}
    plan = {"runs": [{"name": name, "dir": str(folder)} for name, folder in runs], "retrieval_run": retrieval_run,
            "class_index": str(class_index) if needs_runs else None,
            "frame_root": str(frame_root) if retrieval_run else None,
            "writes": {figure: str(path) for figure, path in writes.items()}}
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return plan
    class_names = read_class_index(class_index) if needs_runs else []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if "distribution" in writes:
        plan["embedding"] = plot_feature_distribution(runs, class_names, class_index, writes["distribution"],
                                                      args.seed)
    if "retrieval" in writes:
        plot_retrieval_grid(retrieval_run, dict(runs)[retrieval_run], class_names, class_index, frame_root,
                            writes["retrieval"], args.num_queries, args.num_neighbours, not args.middle_frame_only)
    if "overview" in writes:
        plot_method_overview(writes["overview"])
    for path in writes.values():
        print(f"wrote {path}", flush=True)
    return plan


if __name__ == "__main__":
    try:
        main()
    except (FigureError, LayoutError) as error:
        sys.exit(f"make_figures.py: error: {error}")
