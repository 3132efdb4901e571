"""Where each dataset lives: one registry, so no user edits code to point at their data.

A registered dataset NAME lives under the data root as ``<root>/<NAME>/frames`` (frame folders) and
``<root>/<NAME>/csv`` (``train_split0k.csv``, ``test_split0k.csv``, ``ClassInd.txt``). The data root
is ``--data-root``, else the environment variable ``VSSL_DATA_ROOT``, else ``<repo>/data``.
``--frame-root`` and ``--csv-dir`` override single entries. Any other ``--dataset`` value is taken as
a path to a CSV folder; its frames default to the sibling ``frames`` folder. CSV rows that name video
files (``<Class>/<video>.mp4``, written by ``write_csv.py --source video``) are read from the video root,
``<root>/<NAME>/videos`` (a CSV folder: the sibling ``videos``), overridden by ``--video-root``. Optical
flow (IIC's u / v modalities) lives in ``<root>/<NAME>/tvl1_flow`` (a CSV folder: the sibling
``tvl1_flow``), overridden by ``--flow-root``; it is only checked when a flow modality asks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dataset.layout import FLOW_COMPONENTS, FLOW_FOLDER, LayoutError, read_class_index

VIDEO_FOLDER = "videos"  # a dataset's video files, next to its frame root

DATA_ROOT_ENV = "VSSL_DATA_ROOT"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DatasetSpec:
    num_classes: int | None  # None: as many as ClassInd.txt lists
    val_size: float  # default hold-out: a count (>= 1) or a fraction of the train split (< 1)
    write_csv_hint: str  # the command that writes the CSV folder


_REAL_DATA_HINT = ("python process_data/src/extract_frame.py --video-root <videos> --frame-root {frames} && "
                   "python process_data/src/write_csv.py --dataset {name} --frame-root {frames} "
                   "--split-dir <official split files> --out-dir {csv}")

REGISTRY: dict[str, DatasetSpec] = {
    "ucf101": DatasetSpec(101, 800, _REAL_DATA_HINT),
    "hmdb51": DatasetSpec(51, 800, _REAL_DATA_HINT),
    "k400": DatasetSpec(400, 800, _REAL_DATA_HINT),
    "demo": DatasetSpec(None, 0.2, (
        "python process_data/src/make_demo_data.py --out {root} && "
        "python process_data/src/extract_frame.py --video-root {root}/videos --frame-root {frames} && "
        "python process_data/src/write_csv.py --dataset ucf101 --frame-root {frames} "
        "--split-dir {root}/splits --out-dir {csv}")),
}
_CSV_FOLDER_SPEC = DatasetSpec(None, 0.2, "python process_data/src/write_csv.py ... --out-dir {csv}")


@dataclass(frozen=True)
class DatasetPaths:
    name: str
    frame_root: Path
    csv_dir: Path
    class_names: list[str]  # empty when the CSV folder has no ClassInd.txt (unlabelled data)
    num_classes: int
    default_val_size: float
    flow_root: Path | None = None
    video_root: Path | None = None

    def check_flow_root(self) -> Path:
        """The flow root, checked to hold the u and v folders (LayoutError naming the folder and the fix)."""
        if self.flow_root is None:
            raise LayoutError(f"dataset {self.name!r} has no flow root: pass --flow-root")
        for component in FLOW_COMPONENTS:
            folder = self.flow_root / component
            if not folder.is_dir():
                raise LayoutError(f"optical-flow folder {folder} does not exist; compute the flow with: "
                                  f"{flow_command(self.frame_root, self.flow_root)} "
                                  "(or point --flow-root at existing TV-L1 flow in <root>/{u,v}/<Class>/<video>/)")
        return self.flow_root

    def split_csv(self, kind: str, split: int) -> Path:
        """``kind`` is "train" or "test"; split k -> ``<kind>_split0k.csv``."""
        return self.csv_dir / f"{kind}_split{split:02d}.csv"


def flow_command(frame_root: Path, flow_root: Path) -> str:
    return f"python process_data/src/extract_flow.py --frame-root {frame_root} --flow-root {flow_root}"


def data_root(flag: str | os.PathLike | None = None) -> Path:
    if flag:
        return Path(flag)
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    return REPO_ROOT / "data"


def resolve_dataset(dataset: str, data_root_flag: str | None = None, frame_root: str | None = None,
                    csv_dir: str | None = None, flow_root: str | None = None,
                    video_root: str | None = None) -> DatasetPaths:
    """Registry name or CSV folder path (+ overrides) -> checked paths and class list."""
    if dataset in REGISTRY:
        spec = REGISTRY[dataset]
        root = data_root(data_root_flag) / dataset
        csv_path = Path(csv_dir) if csv_dir else root / "csv"
        frames_path = Path(frame_root) if frame_root else root / "frames"
    else:
        spec = _CSV_FOLDER_SPEC
        if not Path(dataset).is_dir():
            raise LayoutError(
                f"--dataset {dataset!r} is neither a registered dataset ({', '.join(REGISTRY)}) nor an "
                "existing CSV folder")
        root = Path(dataset).parent
        csv_path = Path(csv_dir) if csv_dir else Path(dataset)
        frames_path = Path(frame_root) if frame_root else root / "frames"
    flow_path = Path(flow_root) if flow_root else root / FLOW_FOLDER
    videos_path = Path(video_root) if video_root else root / VIDEO_FOLDER
    hint = spec.write_csv_hint.format(name=dataset, root=root, frames=frames_path, csv=csv_path)
    if not csv_path.is_dir():
        raise LayoutError(f"CSV folder {csv_path} for dataset {dataset!r} does not exist; write it with: {hint} "
                          "(or point --csv-dir / --data-root / $VSSL_DATA_ROOT at it)")
    if not frames_path.is_dir() and not videos_path.is_dir():
        raise LayoutError(f"frame root {frames_path} for dataset {dataset!r} does not exist; extract the "
                          f"frames with: {hint} (or point --frame-root / --data-root at them, or --video-root at "
                          "the videos of a CSV written by write_csv.py --source video)")
    class_file = csv_path / "ClassInd.txt"
    class_names = read_class_index(class_file) if class_file.is_file() else []
    if spec.num_classes is not None and class_names and len(class_names) != spec.num_classes:
        raise LayoutError(f"{class_file} lists {len(class_names)} classes but {dataset} has "
                          f"{spec.num_classes}; re-run process_data/src/write_csv.py --dataset {dataset}")
    num_classes = len(class_names) or (spec.num_classes or 0)
    return DatasetPaths(dataset, frames_path, csv_path, class_names, num_classes, spec.val_size, flow_path,
                        videos_path)
