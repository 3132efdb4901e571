"""An error inside a DataLoader worker ends every entry script within seconds, with its one-line message, a
non-zero status and no worker left behind (workers >= 1, the default). The scripts run as a user runs them, in
their own process group, each under a hard time limit: a hang fails the test instead of blocking the suite."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataset.layout import VideoRecord, write_class_index, write_split_csv
from model.classifier import VideoClassifier
from utils.checkpoint_io import save_checkpoint
from utils.workers import quiet_worker
from video_fixtures import smooth_frames, write_h264

REPO = Path(__file__).resolve().parents[1]
EXIT_WITHIN_S = 30  # after the error line
START_WITHIN_S = 240  # to the error line, on a busy 2-core machine
NUM_VIDEOS, FRAMES = 6, 10
# a worker of the wrapped script kills itself (SIGKILL) as it starts, as the kernel's OOM killer would
KILL_FIRST_WORKER = """
import os, runpy, signal, sys
sys.path[:0] = [{repo!r}]
import utils.workers
quiet = utils.workers.quiet_worker

def dying_worker(worker_id):
    quiet(worker_id)
    if worker_id == 0:
        os.kill(os.getpid(), signal.SIGKILL)
utils.workers.quiet_worker = dying_worker
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 videos in 2 classes, as frame folders (36 x 40) and as H.264 files, with their CSVs; a finetuned
    checkpoint of a narrow r3d (random weights) for test.py, retrieve.py, embed.py and finetune.py."""
    root = tmp_path_factory.mktemp("worker_errors")
    rng = np.random.default_rng(0)
    frames, videos = [], []
    for v in range(NUM_VIDEOS):
        label = v % 2
        name = f"Class{label}/v_Class{label}_g{v:02d}_c01"
        (root / "frames" / name).mkdir(parents=True)
        for t in range(FRAMES):
            cv2.imwrite(str(root / "frames" / name / f"image_{t + 1:05d}.jpg"),
                        rng.integers(0, 255, (36, 40, 3), dtype=np.uint8))
        write_h264(root / "videos" / f"{name}.mp4", smooth_frames(FRAMES, seed=v))
        frames.append(VideoRecord(name, FRAMES, label))
        videos.append(VideoRecord(f"{name}.mp4", FRAMES, label))
    for kind, records in (("csv", frames), ("video_csv", videos)):
        write_split_csv(root / kind / "train_split01.csv", records)
        write_split_csv(root / kind / "test_split01.csv", records)
        write_class_index(root / kind / "ClassInd.txt", ["Class0", "Class1"])
    model = VideoClassifier.build("r3d", 4, 2)
    save_checkpoint({"model": model.state_dict(), "epoch": 1,
                     "config": {"net": "r3d", "base_width": 4, "num_frames": 8, "stride": 1, "size": 32,
                                "resize": [36, 40], "pretrain": "none"}}, root / "finetuned.pth")
    return root


def spoil(data: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the data set with one video broken ``how``; returns its root."""
    root = tmp_path / "data"
    shutil.copytree(data / "frames", root / "frames")
    shutil.copytree(data / "videos", root / "videos")
    for kind in ("csv", "video_csv"):
        shutil.copytree(data / kind, root / kind)
    video = "Class1/v_Class1_g03_c01"
    if how == "corrupt frames":  # the count stays right: only decoding a JPEG finds it
        for frame in (root / "frames" / video).iterdir():
            frame.write_bytes(b"\xff\xd8 not a JPEG" * 10)
    elif how == "mixed frame sizes":  # one frame of another size inside a video
        cv2.imwrite(str(root / "frames" / video / "image_00004.jpg"), np.zeros((50, 60, 3), np.uint8))
    elif how == "corrupt video":
        (root / "videos" / f"{video}.mp4").write_bytes(b"\x00broken" * 100)
    return root


def command(script: str, root: Path, data: Path, out: Path, source: str) -> list[str]:
    flags = {"csv": ["--dataset", str(root / "csv"), "--frame-root", str(root / "frames")],
             "video": ["--dataset", str(root / "video_csv"), "--video-root", str(root / "videos")]}[source]
    if source == "video" and script in ("train_ssl.py", "finetune.py"):
        flags += ["--max-bad-videos", "0"]  # training would swap the bad video for another; evaluation never does
    geometry = ["--num-frames", "8", "--stride", "1", "--size", "32", "--resize", "36", "40"]
    ckpt = str(data / "finetuned.pth")
    common = ["--workers", "2", "--device", "cpu", "--amp", "none"]
    return {
        "train_ssl.py": [*flags, *geometry, "--output-dir", str(out), "--model", "simclr", "--mode", "clip", "--net",
                         "r3d", "--base-width", "4", "--batch-size", "2", "--epochs", "1"],
        "finetune.py": [*flags, *geometry, "--output-dir", str(out), "--pretrain", ckpt, "--batch-size", "2",
                        "--epochs", "1", "--val-size", "2"],
        "test.py": [*flags, "--ckpt", ckpt, "--output-dir", str(out), "--batch-size", "2"],
        "retrieve.py": [*flags, "--ckpt", ckpt, "--output-dir", str(out), "--batch-size", "2"],
        "embed.py": ["--ckpt", ckpt, "--videos", str(root / "videos"), "--out", str(out / "features.npz"),
                     "--clips", "2", "--batch-size", "2"],
    }[script] + common


def run_until_exit(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` in a new process group; (exit status, stderr). Fails the test when the process has not
    printed an error line within START_WITHIN_S, has not exited EXIT_WITHIN_S after it, or left any process of
    its group (a DataLoader worker) alive."""
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines, error_at = [], None
    try:
        os.set_blocking(process.stderr.fileno(), False)
        deadline = time.monotonic() + START_WITHIN_S
        while process.poll() is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                time.sleep(0.05)
                continue
            lines.append(line)
            if line.startswith("error: ") and error_at is None:
                error_at = time.monotonic()
                deadline = error_at + EXIT_WITHIN_S
        lines += process.stderr.read().splitlines(keepends=True) if process.poll() is not None else []
        stderr = "".join(lines)
        assert process.poll() is not None, (
            f"still running {EXIT_WITHIN_S} s after its error line" if error_at else
            f"no error line within {START_WITHIN_S} s") + f"; stderr:\n{stderr[-3000:]}"
        time.sleep(0.5)  # a worker's exit may trail its parent's by a moment
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # nothing of the group is left
        return process.returncode, stderr
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


# (script, data source, what is broken, the words the one error line must contain)
CASES = [
    ("train_ssl.py", "csv", "corrupt frames", "v_Class1_g03_c01/image_"),
    ("train_ssl.py", "csv", "mixed frame sizes", "have different sizes"),
    ("train_ssl.py", "video", "corrupt video", "v_Class1_g03_c01.mp4"),
    ("finetune.py", "csv", "corrupt frames", "v_Class1_g03_c01/image_"),
    ("test.py", "video", "corrupt video", "v_Class1_g03_c01.mp4"),
    ("retrieve.py", "csv", "corrupt frames", "v_Class1_g03_c01/image_"),
]


@pytest.mark.parametrize("script, source, how, named", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_an_error_in_a_worker_ends_the_script_with_one_line(data, tmp_path, script, source, how, named):
    root = spoil(data, tmp_path, how)
    status, stderr = run_until_exit([sys.executable, script, *command(script, root, data, tmp_path / "out", source)],
                                    REPO)
    assert status == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("script", ["train_ssl.py", "embed.py"])
def test_a_killed_worker_ends_the_script_with_one_line(data, tmp_path, script):
    wrapper = tmp_path / "kill_first_worker.py"
    wrapper.write_text(KILL_FIRST_WORKER.format(repo=str(REPO)))
    argv = [sys.executable, str(wrapper), script, *command(script, data, data, tmp_path / "out", "csv")]
    status, stderr = run_until_exit(argv, REPO)
    assert status == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: DataLoader worker") and "lower --workers" in last, stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="without sigwaitinfo (macOS) any SIGTERM ends a worker")
def test_a_worker_ignores_a_jobwide_sigterm_and_stops_at_its_parents():
    """The job's SIGTERM (from the scheduler, to every process) must not kill a worker before the training
    process has saved; its parent's SIGTERM (how multiprocessing stops daemon children at exit) must."""
    loader = torch.utils.data.DataLoader(range(8), batch_size=1, num_workers=1, worker_init_fn=quiet_worker)
    batches = iter(loader)
    next(batches)
    worker = batches._workers[0]
    try:
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
        worker.join(timeout=2)
        assert worker.is_alive()
        assert next(batches).item() == 1
        worker.terminate()  # SIGTERM from the parent
        worker.join(timeout=10)
        assert worker.exitcode == 0  # a clean stop: torch's SIGCHLD handler takes any other status for a crash
    finally:
        batches._shutdown_workers()
