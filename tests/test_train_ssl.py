"""train_ssl.py end to end on a tiny frame-folder dataset: exact resume (epoch boundary and SIGKILL
mid-epoch), the non-finite guard, --dry-run for every method × mode."""

import contextlib
import io
import json
import os
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

import train_ssl
from dataset.layout import VideoRecord, write_class_index, write_split_csv
from engine.interrupts import NonFiniteLossError
from engine.training import lr_factor
from model.dualvar import MODES
from utils.checkpoint_io import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
NUM_VIDEOS = 6  # batch 2 -> 3 iterations per epoch


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """6 videos of 10 JPEG frames (36×40) in 2 classes; returns (csv dir, frame root)."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    records = []
    for v in range(NUM_VIDEOS):
        label = v % 2
        frame_dir = f"Class{label}/v_Class{label}_g{v:02d}_c01"
        (root / "frames" / frame_dir).mkdir(parents=True)
        for t in range(10):
            image = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "frames" / frame_dir / f"image_{t + 1:05d}.jpg"), image)
        records.append(VideoRecord(frame_dir, 10, label))
    write_split_csv(root / "csv" / "train_split01.csv", records)
    write_split_csv(root / "csv" / "test_split01.csv", records[:2])
    write_class_index(root / "csv" / "ClassInd.txt", ["Class0", "Class1"])
    return root / "csv", root / "frames"


def cli_args(tiny_data, output_dir, *extra):
    csv_dir, frame_root = tiny_data
    return ["--dataset", str(csv_dir), "--frame-root", str(frame_root), "--output-dir", str(output_dir),
            "--model", "simclr", "--mode", "clip-sr-tc", "--net", "r3d", "--base-width", "8",
            "--num-frames", "8", "--stride", "1", "--size", "32", "--resize", "36", "40",
            "--batch-size", "2", "--workers", "0", "--epochs", "2", "--schedule", "1", "--lr", "0.05",
            "--seed", "5", "--log-every", "1", "--device", "cpu", *extra]


def run(tiny_data, output_dir, *extra):
    train_ssl.main(train_ssl.get_args_parser().parse_args(cli_args(tiny_data, output_dir, *extra)))


def final_weights(output_dir):
    ckpt = load_checkpoint(Path(output_dir) / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["global_step"]) == (2, 0, 2 * NUM_VIDEOS // 2)
    return ckpt["model"]


def logged_losses(output_dir):
    lines = [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]
    return [(line["kind"], line["step"], line["loss"]) for line in lines]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


PRINTED = {}  # what the uninterrupted run printed


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        run(tiny_data, output_dir)
    PRINTED["uninterrupted"] = printed.getvalue()
    return output_dir


def test_the_configuration_is_one_line_of_changed_flags(uninterrupted):
    lines = [line for line in PRINTED["uninterrupted"].splitlines() if line.startswith("configuration")]
    assert len(lines) == 1 and "--epochs 2" in lines[0] and "--lr 0.05" in lines[0]
    assert "--save-freq" not in lines[0] and "--weight-decay" not in lines[0]  # at their defaults
    assert f"every flag goes to {uninterrupted / 'config.json'}" in lines[0]
    assert '"lr":' not in PRINTED["uninterrupted"]  # no JSON dump
    # not a terminal: the progress bar prints plain lines, no carriage-return updates
    assert "\r" not in PRINTED["uninterrupted"] and "epoch 1: 3/3 (100%)" in PRINTED["uninterrupted"]


def test_uninterrupted_run_writes_logs_and_checkpoints(uninterrupted):
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"checkpoint.pth", "config.json", "log.jsonl", "tensorboard"} <= names
    lines = [json.loads(line) for line in (uninterrupted / "log.jsonl").read_text().splitlines()]
    iters = [line for line in lines if line["kind"] == "iter"]
    assert len(iters) == 6 and all(np.isfinite(line["loss"]) for line in iters)
    assert {"loss_clip", "loss_sr", "loss_tc", "acc_rank", "lr", "samples_per_s"} <= set(iters[0])
    assert [line["lr"] for line in iters] == pytest.approx([0.05] * 3 + [0.005] * 3)  # --schedule 1
    assert [line["epoch"] for line in lines if line["kind"] == "epoch"] == [0, 1]
    config = json.loads((uninterrupted / "config.json").read_text())
    assert config["config"]["resolved"]["loss_weights"] == {"loss_clip": 1.0, "loss_sr": 1.0, "loss_tc": 1.0}


def test_resume_at_epoch_boundary_reaches_the_same_weights(tiny_data, uninterrupted, tmp_path):
    run(tiny_data, tmp_path, "--epochs", "1", "--save-freq", "1")
    assert load_checkpoint(tmp_path / "epoch000.pth")["epoch"] == 1
    run(tiny_data, tmp_path)  # --resume auto is the default
    assert_same_weights(final_weights(tmp_path), final_weights(uninterrupted))


def test_resume_after_sigkill_mid_epoch_reaches_the_same_weights(tiny_data, uninterrupted, tmp_path):
    # The child sleeps in every step so that the kill lands mid-epoch; nothing else is patched.
    child = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(REPO)!r}]
        import train_ssl
        forward = train_ssl.ssl_forward
        train_ssl.ssl_forward = lambda *a: (time.sleep(0.5), forward(*a))[1]
        train_ssl.main(train_ssl.get_args_parser().parse_args(sys.argv[1:]))
    """)
    args = cli_args(tiny_data, tmp_path, "--save-every-iters", "1")
    process = subprocess.Popen([sys.executable, "-c", child, *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint, killed_at = tmp_path / "checkpoint.pth", None
    deadline = time.monotonic() + 120
    try:
        while killed_at is None and time.monotonic() < deadline and process.poll() is None:
            if checkpoint.is_file():
                ckpt = load_checkpoint(checkpoint)
                if ckpt["iteration"] > 0:
                    os.kill(process.pid, signal.SIGKILL)
                    killed_at = (ckpt["epoch"], ckpt["iteration"])
            time.sleep(0.05)
    finally:
        process.kill()
        stderr = process.communicate()[1].decode()
    assert killed_at is not None, f"no mid-epoch checkpoint appeared; child stderr:\n{stderr}"
    assert load_checkpoint(checkpoint)["epoch"] < 2  # the kill left work to do

    run(tiny_data, tmp_path, "--workers", "1")  # a different worker count must not matter
    assert_same_weights(final_weights(tmp_path), final_weights(uninterrupted))
    # every step logged once, with the losses of the uninterrupted run (epoch means of the resumed
    # epoch cover only its resumed part, so compare the iterations)
    resumed, reference = logged_losses(tmp_path), logged_losses(uninterrupted)
    assert [line[:2] for line in resumed] == [line[:2] for line in reference]
    assert [line[2] for line in resumed if line[0] == "iter"] == pytest.approx(
        [line[2] for line in reference if line[0] == "iter"], rel=1e-5)


def test_sigterm_saves_at_the_next_iteration_boundary_and_the_resume_is_exact(tiny_data, uninterrupted, tmp_path):
    # As a cluster scheduler does, the signal goes to the whole process group, DataLoader worker included.
    child = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(REPO)!r}]
        import train_ssl
        from engine.launch import run_cli
        forward = train_ssl.ssl_forward
        train_ssl.ssl_forward = lambda *a: (time.sleep(0.5), forward(*a))[1]
        run_cli(train_ssl.main, train_ssl.parse_args(sys.argv[1:]))
    """)
    process = subprocess.Popen([sys.executable, "-c", child, *cli_args(tiny_data, tmp_path, "--workers", "1")],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    log, deadline = tmp_path / "log.jsonl", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None and not (
                log.is_file() and '"iter"' in log.read_text()):
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        stderr = process.communicate(timeout=60)[1].decode()
    finally:
        process.kill()
    last_line = stderr.strip().splitlines()[-1]
    assert process.returncode == 128 + signal.SIGTERM, stderr
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert ckpt["iteration"] > 0 and ckpt["epoch"] < 2  # saved mid-epoch, work left to do
    assert last_line == (f"error: stopped by SIGTERM at epoch {ckpt['epoch']}, iteration {ckpt['iteration']}; "
                         f"checkpoint saved there: {tmp_path / 'checkpoint.pth'}; to go on, run the same command "
                         "again (--resume auto continues from it)")
    assert not list(tmp_path.glob(".*.tmp*"))

    run(tiny_data, tmp_path)
    assert_same_weights(final_weights(tmp_path), final_weights(uninterrupted))


ELASTIC_WORKER = """
import os, signal, sys, time
sys.path[:0] = [{repo!r}]
import train_ssl
from engine.launch import run_cli
if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "1":
    # join the restarted group late, so that rank 0 looks up rank 1's address before rank 1 publishes it: a key
    # left by the dead group would be read then (utils.distributed.restart_scoped_store)
    time.sleep(3)
if os.environ.get("KILL_AT_FORWARD") and os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    forward, calls = train_ssl.ssl_forward, []

    def dying_forward(*args):
        calls.append(None)
        if len(calls) == int(os.environ["KILL_AT_FORWARD"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(*args)
    train_ssl.ssl_forward = dying_forward
run_cli(train_ssl.main, train_ssl.parse_args(sys.argv[1:]))
"""


def test_torchrun_elastic_restart_after_a_killed_worker_reaches_the_same_weights(tiny_data, tmp_path):
    """torchrun --max-restarts restarts both gloo workers when one is SIGKILLed mid-epoch; --resume auto makes
    the restarted group end with the weights of an uninterrupted 2-process run."""
    worker = tmp_path / "worker.py"
    worker.write_text(ELASTIC_WORKER.format(repo=str(REPO)))

    def torchrun(output_dir, **env):
        args = cli_args(tiny_data, output_dir, "--batch-size", "1", "--save-every-iters", "1", "--dist-backend",
                        "gloo")  # global batch 2: 3 iterations per epoch
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               "2", "--max-restarts", "1", "--monitor-interval", "0.2", str(worker), *args],
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True,
                              text=True, timeout=600)

    killed = torchrun(tmp_path / "killed", KILL_AT_FORWARD="2")  # rank 1 dies in epoch 0, iteration 1
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "resuming from" in killed.stdout and "at epoch 0, iteration 1" in killed.stdout, killed.stdout[-3000:]
    reference = torchrun(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path / "killed"), final_weights(tmp_path / "reference"))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    run(tiny_data, tmp_path, "--epochs", "1", "--max-iters-per-epoch", "1")
    before = (tmp_path / "checkpoint.pth").read_bytes()
    with (pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 0 .*loss=inf.*loss_tc=[0-9.]+"
                                                  r".*last good checkpoint: .*checkpoint.pth"),
          pytest.warns(UserWarning, match=r"changed configuration \(tc_loss_weight: 1.0 -> inf\)")):
        run(tiny_data, tmp_path, "--max-iters-per-epoch", "1", "--tc-loss-weight", "inf")
    assert (tmp_path / "checkpoint.pth").read_bytes() == before


def test_fp16_on_cpu_is_refused(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        run(tiny_data, tmp_path, "--amp", "fp16")


def test_lr_factor_warms_up_then_decays_at_the_schedule():
    args = train_ssl.get_args_parser().parse_args(["--warmup-epochs", "2", "--schedule", "3", "4", "--lr-gamma", "0.1"])
    assert [lr_factor(e, args) for e in range(5)] == pytest.approx([0.5, 1, 1, 0.1, 0.01])


@pytest.mark.parametrize("method", ["simclr", "moco"])
@pytest.mark.parametrize("mode", MODES)
def test_dry_run_prints_the_configuration_without_touching_data(method, mode, tmp_path, capsys):
    args = train_ssl.get_args_parser().parse_args([
        "--dry-run", "--dataset", str(tmp_path / "no_such_dataset"), "--output-dir", str(tmp_path / "out"),
        "--model", method, "--mode", mode, "--base-width", "8"])
    train_ssl.main(args)
    config = json.loads(capsys.readouterr().out)
    assert (config["model"], config["mode"]) == (method, mode)
    resolved = config["resolved"]
    expected_terms = {"loss_clip"} | {f"loss_{t}" for t in ("sr", "tc") if t in mode.split("-")}
    assert set(resolved["loss_weights"]) == expected_terms
    assert resolved["num_views"] == (3 if "sr" in mode else 2)
    assert resolved["sampler"] == ("dualvar" if "sr" in mode else "two_view")
    assert not (tmp_path / "out").exists()


def test_iic_takes_its_published_recipe_as_defaults_and_flags_still_win():
    iic = train_ssl.parse_args(["--model", "iic"])
    assert (iic.optimizer, iic.lr, iic.batch_size, iic.epochs, iic.schedule, iic.lr_gamma, iic.num_frames) == \
        ("sgd", 0.01, 16, 240, [45, 90, 125, 160], 0.2, 16)
    assert train_ssl.parse_args(["--model", "iic", "--lr", "0.5", "--schedule"]).schedule == []
    assert train_ssl.parse_args(["--model", "iic", "--lr", "0.5"]).lr == 0.5
    dualvar = train_ssl.parse_args(["--model", "simclr"])
    assert (dualvar.lr, dualvar.epochs, dualvar.schedule) == (0.003, 200, [120, 160])


def test_grad_checkpoint_recomputes_the_stages_and_reaches_the_same_weights(tiny_data, tmp_path, monkeypatch):
    """--grad-checkpoint reaches the weights of the same run without it (fp32, two epochs with SGD momentum), the
    backbone's stages going through torch.utils.checkpoint; the configuration and the memory estimate record it."""
    import model.backbones
    calls = []
    checkpoint = model.backbones.checkpoint
    monkeypatch.setattr(model.backbones, "checkpoint", lambda *a, **kw: calls.append(1) or checkpoint(*a, **kw))
    run(tiny_data, tmp_path / "plain", "--amp", "none")
    assert not calls
    run(tiny_data, tmp_path / "checkpointed", "--amp", "none", "--grad-checkpoint")
    assert len(calls) == 6 * 2 * 5  # 6 steps x 2 backbone calls (A, B, A' and shuffled A') x 5 stages
    assert_same_weights(final_weights(tmp_path / "checkpointed"), final_weights(tmp_path / "plain"))
    config = json.loads((tmp_path / "checkpointed" / "config.json").read_text())["config"]
    assert config["grad_checkpoint"] is True and config["resolved"]["memory_estimate"]["grad_checkpoint"] is True
