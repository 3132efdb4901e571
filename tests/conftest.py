import argparse

import pytest

import extract_frame
import make_demo_data
import write_csv
from dataset.video_dataset import add_data_args

DEMO_CLASSES = ["MoveRight", "MoveLeft", "BounceCircle"]
DEMO_VIDEOS_PER_CLASS = 5  # groups g01-g02 -> 6 test videos, 9 train videos


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A small demo data set run through the real pipeline: videos -> frames -> split CSVs."""
    root = tmp_path_factory.mktemp("demo")
    assert make_demo_data.main(["--out", str(root), "--classes", *DEMO_CLASSES, "--videos-per-class",
                                str(DEMO_VIDEOS_PER_CLASS), "--size", "36", "48", "--frames", "16",
                                "--workers", "1"]) == 0
    assert extract_frame.main(["--video-root", str(root / "videos"), "--frame-root", str(root / "frames"),
                               "--short-side", "0", "--workers", "1"]) == 0
    assert write_csv.main(["--dataset", "ucf101", "--frame-root", str(root / "frames"), "--split-dir",
                           str(root / "splits"), "--out-dir", str(root / "csv")]) == 0
    return root


def tiny_demo_flags(root) -> list[str]:
    """Data flags for 8-frame 32x32 clips of `tiny_demo`, read in this process."""
    return ["--dataset", str(root / "csv"), "--frame-root", str(root / "frames"), "--num-frames", "8",
            "--size", "32", "--resize", "36", "48", "--workers", "0"]


def tiny_demo_args(root, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(tiny_demo_flags(root) + list(extra))
