import argparse
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dataset.flags import add_data_args
from dataset.recipes import EVAL, FINETUNE
from model.dualvar import DUALVAR_SAMPLING, TWO_VIEW_SAMPLING
from model.iic import IIC_SAMPLING
from process_data.src import extract_frame, make_demo_data, write_csv

# the sampling recipes under the names that a run's configuration records ("sampler")
RECIPES = {recipe.name: recipe for recipe in (DUALVAR_SAMPLING, TWO_VIEW_SAMPLING, IIC_SAMPLING, FINETUNE, EVAL)}
DEMO_CLASSES = ["MoveRight", "MoveLeft", "Bounce"]
DEMO_VIDEOS_PER_CLASS = 7  # 7 groups of one video; group 1 and 2 are the test split: 6 test, 15 train videos


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny convolutions: threads gain nothing there, and OpenMP spinning under a busy CPU
    costs several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_gloo_processes(worker, tmp_path, nprocs: int = 2, start_method: str = "spawn", timeout: float = 120):
    """Run ``worker(rank, port, out_dir)`` in ``nprocs`` processes (each joins a gloo group on ``port``)
    and return what each rank saved to ``out_dir/rank{rank}.pt``; a hung run fails instead of blocking CI.
    ``fork`` spares the children a second import of torch when they need nothing it cannot inherit."""
    context = mp.start_processes(worker, args=(_free_port(), str(tmp_path)), nprocs=nprocs, join=False,
                                 start_method=start_method)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {nprocs}-process gloo run did not finish within {timeout:.0f} s")
    return [torch.load(Path(tmp_path) / f"rank{rank}.pt") for rank in range(nprocs)]


def train_iic_steps(method, dataset, batch_size: int, steps: int = 2, **sgd_kwargs) -> dict:
    """SGD steps (lr 0.01) of an IIC method on consecutive dataset items, batched by ``method.batch_keys``.

    Checks that every loss is finite and that a backbone convolution moved; returns the state before the steps.
    """
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, **sgd_kwargs)
    start = {k: v.clone() for k, v in method.state_dict().items()}
    for step in range(steps):
        items = [dataset[i] for i in range(step * batch_size, (step + 1) * batch_size)]
        batch = [torch.stack([torch.as_tensor(item[key]) for item in items]) for key in method.batch_keys]
        out = method(*batch)
        loss = sum(w * out[name] for name, w in method.loss_weights.items())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    conv = next(k for k in start if k.startswith("encoder.backbone.") and k.endswith("weight"))
    assert not torch.equal(method.state_dict()[conv], start[conv])
    return start
