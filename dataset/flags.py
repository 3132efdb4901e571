"""The data flags of the entry scripts, and the clip flags that the evaluation scripts take from a checkpoint."""

from __future__ import annotations

import argparse

from dataset.clip_input import CLIP_INPUTS
from dataset.local_dataset import REGISTRY
from dataset.video_dataset import DEFAULT_MAX_BAD_VIDEOS
from utils.distributed import default_workers


def _val_size(text: str) -> float:
    value = float(text)
    if value <= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected a count (e.g. 800) or a fraction in (0, 1), got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


# The clip flags that the evaluation scripts take from the checkpoint's configuration unless given, and their values
# where it records none (the defaults of add_data_args).
CLIP_FALLBACKS = {"num_frames": 16, "size": 112, "resize": [128, 171], "clip_input": "rgb"}


def defaults_from_checkpoint(parser: argparse.ArgumentParser, fallbacks: dict) -> None:
    """Make the flags of ``fallbacks`` default to the checkpoint's values (None until it is read), saying so in
    --help."""
    parser.set_defaults(**dict.fromkeys(fallbacks))
    for action in parser._actions:
        if action.dest in fallbacks:
            action.help += f"; default: the checkpoint's value, else {fallbacks[action.dest]}"


def add_data_args(parser: argparse.ArgumentParser, training: bool = True) -> argparse.ArgumentParser:
    """The data flags; without ``training`` (the scripts that only evaluate) not those that only training reads,
    which keep their defaults."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="demo",
                       help=f"registered dataset ({', '.join(REGISTRY)}) or the path of a CSV folder "
                            "(train_split0k.csv, test_split0k.csv, ClassInd.txt)")
    group.add_argument("--data-root", default=None,
                       help="folder holding <dataset>/frames and <dataset>/csv; default $VSSL_DATA_ROOT, "
                            "else <repo>/data")
    group.add_argument("--frame-root", default=None, help="override the dataset's frame folder root")
    group.add_argument("--csv-dir", default=None, help="override the dataset's CSV folder")
    group.add_argument("--flow-root", default=None,
                       help="optical flow for --modality u / v, laid out as <flow-root>/{u,v}/<Class>/<video>/"
                            "frame000001.jpg; default <data-root>/<dataset>/tvl1_flow (a CSV folder: its sibling "
                            "tvl1_flow); written by process_data/src/extract_flow.py")
    group.add_argument("--video-root", default=None,
                       help="video files of a CSV written by process_data/src/write_csv.py --source video (rows "
                            "<Class>/<video>.mp4); default <data-root>/<dataset>/videos (a CSV folder: its sibling "
                            "videos)")
    if training:
        group.add_argument("--max-bad-videos", type=_fraction, default=DEFAULT_MAX_BAD_VIDEOS,
                           help="training replaces a video that fails to decode by another of its class and names "
                                "it on stderr; it stops once more than this fraction of the split's videos has failed")
    group.add_argument("--split", type=int, default=1, help="official split number k (split0k CSVs)")
    group.add_argument("--val-size", type=_val_size, default=None,
                       help="videos held out of the train split for validation (seed 666): a count, or a "
                            "fraction < 1; default 800 for real datasets, 0.2 for the demo and CSV folders")
    group.add_argument("--num-frames", type=int, default=CLIP_FALLBACKS["num_frames"],
                       help="frames per clip (T) that the network sees")
    group.add_argument("--clip-input", default=CLIP_FALLBACKS["clip_input"], choices=CLIP_INPUTS,
                       help="what the network sees of a clip: rgb = its frames (the papers'); diff = the differences "
                            "of consecutive sampled frames, from T + 1 frames decoded and augmented as one clip "
                            "(dataset/clip_input.py; not for IIC, whose views are fixed)")
    group.add_argument("--stride", type=int, default=4,
                       help="temporal stride between clip frames (4 for DualVar pretraining, 2 for "
                            "finetuning and testing; IIC always uses 1)")
    group.add_argument("--size", type=int, default=CLIP_FALLBACKS["size"], help="crop side in pixels")
    group.add_argument("--resize", type=int, nargs=2, default=CLIP_FALLBACKS["resize"], metavar=("H", "W"),
                       help="frames are resized to H x W before cropping")
    group.add_argument("--resize-quirk", action="store_true",
                       help="resize to W x H instead, as the authors' code really did (faithful reproduction)")
    if training:
        group.add_argument("--per-frame-jitter", action="store_true",
                           help="draw colour-jitter factors per frame instead of once per clip")
        group.add_argument("--no-hflip", action="store_true",
                           help="never mirror finetuning clips: for classes that a mirror image turns into each "
                                "other (the demo's MoveLeft / MoveRight, clockwise / anticlockwise)")
    else:
        parser.set_defaults(max_bad_videos=DEFAULT_MAX_BAD_VIDEOS, per_frame_jitter=False, no_hflip=False)
    group.add_argument("--workers", type=int, default=default_workers(),
                       help="DataLoader worker processes per process; default: this node's cores per process, less "
                            "one, at most 8")
    return parser
