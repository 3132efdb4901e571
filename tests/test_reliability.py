"""Issue 12: no run destroys another's work, every failure prints one clear line.

Each test names the defect it guards; most run in-process, before any data is read."""

import importlib.util
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

import finetune
import retrieve
import train_ssl
from conftest import RECIPES, tiny_demo_args, tiny_demo_flags
from dataset import frame_counts
from dataset.build import build_dataset
from dataset.layout import LayoutError, read_split_csv
from engine.checkpoint import CHECKPOINT_NAME, Checkpointer
from engine.launch import describe, printable, run_cli
from engine.output_dir import LOCK_NAME, RUN_KIND_NAME, OutputDirError, OutputDirLock, claim_output_dir
from model.backbones import build_backbone
from utils.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from utils.workers import close_inherited_locks

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", REPO / "test.py")  # not the stdlib `test`
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)
PRETRAIN = {"kind": "pretrain", "model": "simclr", "net": "r3d"}


def pretrain_args(output_dir, *extra):
    return train_ssl.get_args_parser().parse_args([
        "--dataset", str(Path(output_dir).parent / "no_such_dataset"), "--output-dir", str(output_dir),
        "--model", "simclr", "--net", "r3d", "--base-width", "8", "--device", "cpu", *extra])


# ---------------------------------------------------------------- 1. one run per output folder

def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    with claim_output_dir(tmp_path, PRETRAIN):
        assert str(os.getpid()) in (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(OutputDirError, match=rf"in use by another run \(host .*PID {os.getpid()}"):
            train_ssl.main(pretrain_args(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, RUN_KIND_NAME]  # nothing else written
    with claim_output_dir(tmp_path, PRETRAIN):  # released at the end of the first
        pass


def test_a_forked_worker_does_not_keep_the_folder_locked(tmp_path):
    lock = OutputDirLock(tmp_path)
    lock.acquire()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # a DataLoader worker: drops its copy of the lock, outlives its parent's lock
        close_inherited_locks()
        os.write(write_end, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        os.read(read_end, 1)
        lock.release()
        second = OutputDirLock(tmp_path)
        second.acquire()  # would raise if the child still held the lock
        second.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# ---------------------------------------------------------------- 2. one kind of run per output folder

def test_finetuning_into_a_pretraining_folder_is_refused(tmp_path):
    with claim_output_dir(tmp_path, PRETRAIN):
        save_checkpoint({"model": {}}, tmp_path / CHECKPOINT_NAME)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    args = finetune.get_args_parser().parse_args([
        "--pretrain", "none", "--net", "r3d", "--base-width", "8", "--resume", "none", "--output-dir", str(tmp_path),
        "--dataset", str(tmp_path / "no_such_dataset"), "--device", "cpu"])
    with pytest.raises(OutputDirError, match=r"belongs to another kind of run \(kind pretrain, model simclr"):
        finetune.main(args)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    with pytest.raises(OutputDirError, match="net r3d.*this run: .*net r21d"):  # another --net is another kind
        with claim_output_dir(tmp_path, {**PRETRAIN, "net": "r21d"}):
            pass


def test_a_folder_written_before_the_kind_record_is_recognised_by_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config": {"pretrain": "x.pth", "net": "r3d"}}))
    with pytest.raises(OutputDirError, match="kind finetune"):
        with claim_output_dir(tmp_path, PRETRAIN):
            pass


def tiny_checkpointer(tmp_path, config):
    model = torch.nn.Linear(4, 2)
    return Checkpointer(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), config=config)


def test_resuming_a_finetuning_checkpoint_says_so_in_one_short_line(tmp_path):
    finetuned = tiny_checkpointer(tmp_path, {"pretrain": "none", "net": "r3d"})
    finetuned.model = torch.nn.Linear(4, 3)  # and its weights do not fit either
    finetuned.save(1, 0, 1)
    with pytest.raises(CheckpointError) as error:
        tiny_checkpointer(tmp_path, {"model": "simclr", "net": "r3d"}).resume("auto")
    message = str(error.value)
    assert "is a finetune checkpoint (written by finetune.py), which train_ssl.py cannot resume" in message
    assert len(message) < 300 and "\n" not in message


def test_a_model_mismatch_names_a_few_keys_not_all(tmp_path):
    big = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(40)])
    Checkpointer(tmp_path, big, torch.optim.SGD(big.parameters(), lr=0.1)).save(1, 0, 1)
    with pytest.raises(CheckpointError, match=r"unexpected: 0.bias, 0.weight, 1.bias and 77 more") as error:
        tiny_checkpointer(tmp_path, {}).resume("auto")
    assert len(str(error.value)) < 400


# ---------------------------------------------------------------- 3. temporary files of killed writers

def test_temporary_checkpoints_of_killed_runs_are_removed_at_start(tmp_path, capsys):
    stale = tmp_path / f".{CHECKPOINT_NAME}.tmp4194304"
    stale.write_bytes(b"\0" * 2**20)
    unrelated = tmp_path / "notes.tmp1"
    unrelated.write_text("mine")
    with claim_output_dir(tmp_path, PRETRAIN):
        assert not stale.exists() and unrelated.exists()
    assert "removed 1 temporary file(s) (1.0 MiB)" in capsys.readouterr().out


# ---------------------------------------------------------------- 4. test.py / retrieve.py check before the work

@pytest.mark.parametrize("script", [test_script, retrieve])
def test_evaluation_scripts_refuse_an_unwritable_output_dir_before_reading_anything(script, tmp_path):
    not_a_folder = tmp_path / "results"
    not_a_folder.write_text("a file")
    args = script.get_args_parser().parse_args(["--ckpt", str(tmp_path / "unread.pth"), "--output-dir",
                                                str(not_a_folder)])
    with pytest.raises(OutputDirError, match="results is a file, not a folder"):
        script.main(args)
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    if os.access(read_only, os.W_OK):  # root ignores permissions
        pytest.skip("running as root")
    args.output_dir = str(read_only / "out")
    with pytest.raises(OutputDirError, match="cannot be created or written"):
        script.main(args)


def copy_csv_dir(tiny_demo, tmp_path, edit_train_line) -> Path:
    """tiny_demo's CSV folder with each line of train_split01.csv passed through ``edit_train_line``."""
    csv_dir = tmp_path / "csv"
    shutil.copytree(tiny_demo / "csv", csv_dir)
    train_csv = csv_dir / "train_split01.csv"
    lines = train_csv.read_text().splitlines()
    train_csv.write_text("".join(edit_train_line(n, line) + "\n" for n, line in enumerate(lines, start=1)))
    return csv_dir


def test_retrieval_checks_the_labels_before_inference(tiny_demo, tmp_path, monkeypatch):
    csv_dir = copy_csv_dir(tiny_demo, tmp_path, lambda n, line: line.rsplit(",", 1)[0])  # no labels at all
    backbone, _ = build_backbone("r3d", 8)
    ckpt = tmp_path / "pretrained.pth"
    save_checkpoint({"model": {f"encoder.backbone.{k}": v for k, v in backbone.state_dict().items()},
                     "config": {"net": "r3d", "base_width": 8}}, ckpt)
    monkeypatch.setattr(retrieve, "run_inference", lambda *a, **k: pytest.fail("inference ran"))
    args = retrieve.get_args_parser().parse_args(tiny_demo_flags(tiny_demo) + [
        "--dataset", str(csv_dir), "--ckpt", str(ckpt), "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    with pytest.raises(LayoutError, match=r"train_split01.csv:1: video \S+ has no class label .*15 such row"):
        retrieve.main(args)


def test_finetuning_names_the_csv_line_of_a_negative_label(tiny_demo, tmp_path):
    csv_dir = copy_csv_dir(tiny_demo, tmp_path, lambda n, line: line.rsplit(",", 1)[0] + ",-2" if n == 4 else line)
    args = finetune.get_args_parser().parse_args(tiny_demo_flags(tiny_demo) + [
        "--dataset", str(csv_dir), "--pretrain", "none", "--net", "r3d", "--base-width", "8",
        "--output-dir", str(tmp_path / "out"), "--val-freq", "0", "--device", "cpu"])
    with pytest.raises(LayoutError, match=r"train_split01.csv:4: video \S+ has no class label"):
        finetune.main(args)


# ---------------------------------------------------------------- 10. frame counts checked at start

def test_a_frame_folder_that_disagrees_with_the_csv_stops_the_run_at_its_start(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    frames = tmp_path / "frames"
    shutil.copytree(tiny_demo / "frames", frames)
    args = tiny_demo_args(tiny_demo, "--frame-root", str(frames))
    build_dataset(args, "trainval", RECIPES["finetune"])  # consistent: lists every folder once, and caches the counts
    monkeypatch.setattr(frame_counts, "count_frames", lambda folder: pytest.fail(f"{folder} listed again"))
    build_dataset(args, "trainval", RECIPES["finetune"])  # unchanged folders: one stat each, no listing
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    short = frames / read_split_csv(tiny_demo / "csv" / "train_split01.csv")[4].frame_dir
    (short / "image_00016.jpg").unlink()
    with pytest.raises(LayoutError, match=rf"1 of 15 frame folders do not hold .* e.g. {short}: 15 on disk, 16 in the "
                                          r"CSV\. .*write_csv\.py.*--redo "):
        build_dataset(args, "trainval", RECIPES["finetune"])


# ---------------------------------------------------------------- 7. one line, not a traceback

def test_an_output_dir_that_is_a_file_ends_in_one_line(tmp_path, capsys):
    not_a_folder = tmp_path / "run"
    not_a_folder.write_text("")
    with pytest.raises(SystemExit) as exit_:
        run_cli(train_ssl.main, pretrain_args(not_a_folder))
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: --output-dir {not_a_folder} is a file, not a folder: choose another " \
                                      "--output-dir\n"


def test_a_full_disk_keeps_the_checkpoint_and_says_where(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"epoch": 1}, path)
    (tmp_path / f".{CHECKPOINT_NAME}.tmp{os.getpid()}").symlink_to("/dev/full")  # writes there fail with ENOSPC
    with pytest.raises(OSError) as error:
        save_checkpoint({"epoch": 2, "weights": torch.zeros(1000)}, path)
    message, status = describe(error.value, str(tmp_path))
    assert message.startswith(f"no space left on {tmp_path} while writing {CHECKPOINT_NAME}") and status == 1
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


class FailingItems(torch.utils.data.Dataset):
    def __init__(self, failure):
        self.failure = failure

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if self.failure == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        raise LayoutError("frame /data/v1/image_00003.jpg is missing: re-extract it")


@pytest.mark.parametrize("failure, expected", [
    ("bad frame", "frame /data/v1/image_00003.jpg is missing: re-extract it"),
    ("killed", r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly: a data-loading process died, most often "
               "killed for lack of memory; lower --workers or --batch-size"),
])
def test_dataloader_worker_failures_read_as_one_line(failure, expected):
    loader = torch.utils.data.DataLoader(FailingItems(failure), batch_size=2, num_workers=1)
    with pytest.raises(Exception) as error:
        next(iter(loader))
    message, status = describe(error.value)
    assert re.match(expected, message) if failure == "killed" else message == expected
    assert status == 1


# ---------------------------------------------------------------- 9, 11. what the first forward refuses

@pytest.mark.parametrize("flags, refusal", [
    (["--num-frames", "8", "--n-series", "3"], "--num-frames 8 is not divisible by --n-series 3"),
    (["--model", "iic", "--intra-neg", "shuffle", "--num-frames", "6"], "--num-frames 6 is not divisible by 4"),
    (["--batch-size", "1"], "--model simclr .* global batch of 1 .* has no negatives"),
])
def test_dry_run_refuses_what_the_real_run_refuses(flags, refusal, tmp_path):
    with pytest.raises(ValueError, match=refusal):
        train_ssl.main(train_ssl.parse_args(["--dry-run", "--output-dir", str(tmp_path / "out"), *flags]))
    assert not (tmp_path / "out").exists()


def test_a_run_that_fails_before_it_starts_records_no_kind(tmp_path):
    """A --dataset that does not exist: the folder must not then refuse a run of another kind."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--dataset '.*nowhere' is neither"):
        train_ssl.main(train_ssl.parse_args(["--dataset", str(tmp_path / "nowhere"), "--output-dir", str(out),
                                             "--device", "cpu"]))
    assert out.is_dir() and not (out / RUN_KIND_NAME).exists() and not (out / "config.json").exists()
    with claim_output_dir(out, {"kind": "finetune", "model": "classifier", "net": "r3d"}):
        pass


def test_dry_run_refuses_an_output_dir_of_another_kind(tmp_path):
    with claim_output_dir(tmp_path, PRETRAIN):
        pass
    args = finetune.get_args_parser().parse_args(["--dry-run", "--pretrain", "none", "--output-dir", str(tmp_path)])
    with pytest.raises(OutputDirError, match="another kind of run"):
        finetune.main(args)


# ---------------------------------------------------------------- 8. messages

def test_checkpoint_read_errors_give_the_scripts_own_fix(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "payload": object()}, pickled)
    with pytest.raises(CheckpointError) as error:
        test_script.main(test_script.get_args_parser().parse_args(
            ["--ckpt", str(pickled), "--output-dir", str(tmp_path / "out")]))
    assert "pass another --ckpt" in str(error.value)
    assert "--resume" not in str(error.value) and "weights_only=False" not in str(error.value)


@pytest.mark.parametrize("content", [b"e" + bytes(range(256)) * 4, b"\x80\x02garbage" * 50, "pickled"])
def test_an_unreadable_init_from_file_is_named_once_without_torchs_advice(content, tmp_path):
    from model.weights import init_from
    path = tmp_path / "release.pth"
    if content == "pickled":
        torch.save({"state_dict": {}, "payload": object()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        init_from(build_backbone("r3d", 4)[0], path, "r3d")
    message = str(error.value)
    assert message.count(str(path)) == 1 and message.count("--init-from") == 1 and "\n" not in message
    assert "weights_only" not in message and not re.search(r"\(\d+\)|'\d+'|operand", message), message
    assert "cannot read it as a tensors-only checkpoint (it " in message


def test_process_data_tools_name_an_output_folder_they_cannot_write(tiny_demo, tmp_path, capsys):
    """One line and exit status 2, not an OSError traceback: a file in the way here (a read-only folder takes the
    same path, but the tests may run as root, who writes there anyway)."""
    from process_data.src import extract_frame, write_csv
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert write_csv.main(["--dataset", "ucf101", "--frame-root", str(tiny_demo / "frames"), "--split-dir",
                           str(tiny_demo / "splits"), "--out-dir", str(blocked / "csv")]) == 2
    assert extract_frame.main(["--video-root", str(tiny_demo / "videos"), "--frame-root", str(blocked / "frames"),
                               "--workers", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [f"write_csv.py: error: --out-dir {blocked / 'csv'} is not writable (Not a directory): choose "
                      "a folder you can write to, or fix its permissions",
                      f"extract_frame.py: error: --frame-root {blocked / 'frames'} is not writable (Not a directory): "
                      "choose a folder you can write to, or fix its permissions"]


def test_one_line_messages_keep_control_characters_visible():
    assert printable("bad \x1b[2Kframe\r folder\nsecond line") == "bad \\x1b[2Kframe\\r folder second line"
