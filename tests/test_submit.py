"""paper_scripts/submit.py: the launcher's commands for N × G Slurm tasks, the plain sbatch script, and a
2-process CPU job under submitit's local executor that is interrupted, requeued, and ends with the
weights of an uninterrupted run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_demo_flags
from paper_scripts import submit
from utils.checkpoint_io import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

try:
    import submitit
except ImportError:  # the launcher and sbatch tests need no submitit
    submitit = None
needs_submitit = pytest.mark.skipif(submitit is None, reason="submitit is not installed")


def flag(command: list[str], name: str) -> str:
    return command[len(command) - 1 - command[::-1].index(name) + 1]  # the last occurrence wins in argparse


def test_commands_come_from_the_launcher_table_for_every_process(tmp_path, monkeypatch):
    monkeypatch.setenv("VSSL_DATA_ROOT", str(tmp_path / "data"))  # no demo data yet: its preparation is printed
    commands, helpers = submit.launcher_commands("pretrain", "simclr_clip-sr-tc_r21d_ucf101", 16, ["--workers", "8"])
    assert helpers == [] and len(commands) == 1
    command = commands[0]
    assert command[0] == "train_ssl.py" and "torchrun" not in command
    assert flag(command, "--batch-size") == "4"  # the published global batch 64 over 16 processes
    assert (flag(command, "--mode"), flag(command, "--net"), flag(command, "--workers")) == ("clip-sr-tc", "r21d", "8")
    assert command[-2:] == ["--resume", "auto"]
    printed = subprocess.run(["bash", "paper_scripts/pretrain/simclr_clip-sr-tc_r21d_ucf101.sh", "--workers", "8"],
                             cwd=REPO,
                             env={**os.environ, "PRINT_ONLY": "1", "NUM_GPUS": "16"}, capture_output=True, text=True)
    assert printed.stdout.split()[4:] == command[:-2]  # the launcher's own command, torchrun removed

    commands, _ = submit.launcher_commands("run", "iic_repeat_res_r3d_ucf101", 2)
    assert [c[0] for c in commands] == ["train_ssl.py", "finetune.py", "finetune.py", "test.py", "test.py",
                                        "retrieve.py"]
    assert [c[-2:] == ["--resume", "auto"] for c in commands] == [True, True, True, False, False, False]
    _, helpers = submit.launcher_commands("run", "demo", 2)
    assert "process_data/src/make_demo_data.py" in helpers and "train_ssl.py" not in helpers
    with pytest.raises(ValueError, match="global batch 64 does not split over NUM_GPUS=3"):
        submit.launcher_commands("pretrain", "simclr_clip_r21d_ucf101", 3)
    with pytest.raises(ValueError, match="no launcher paper_scripts/pretrain/nope.sh"):
        submit.launcher_commands("pretrain", "nope", 2)


def test_print_sbatch_gives_a_plain_requeueing_script(capsys, tmp_path):
    logs = tmp_path / "logs"
    assert submit.main(["--exp", "simclr_clip_r21d_ucf101", "--mode", "finetune", "--nodes", "2", "--gpus-per-node",
                        "4", "--partition", "gpu", "--account", "lab", "--time", "1-02:00:00", "--log-dir",
                        str(logs), "--print-sbatch", "--", "--workers", "8"]) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=1-02:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --requeue", f"#SBATCH --signal={submit.SBATCH_SIGNAL}@180",
                 f"#SBATCH --output={logs}/%x-%j.out"):
        assert line in script.splitlines()
    assert logs.is_dir()  # Slurm opens the output file there before the script runs, and creates no folder
    assert script.rstrip().endswith(f"srun {sys.executable} paper_scripts/submit.py --exp simclr_clip_r21d_ucf101 "
                                     f"--mode finetune --nodes 2 --gpus-per-node 4 --log-dir {logs} --slurm-task -- "
                                     "--workers 8")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert submit.parse_time("1-02:00:30") == 26 * 60 + 1
    with pytest.raises(ValueError, match="--time '90'"):
        submit.parse_time("90")
    with pytest.raises(ValueError, match=r"--signal-delay-s 600 must be positive and shorter than --time 00:02:00 "
                                         r"\(120 s\)"):
        submit.main(["--exp", "demo", "--mode", "run", "--time", "00:02:00", "--signal-delay-s", "600",
                     "--print-sbatch"])
    assert submit.get_args_parser().format_usage().startswith("usage: ")
    assert "Submit" not in submit.get_args_parser().format_usage()  # the program's name, not its description


def test_a_requeued_plain_sbatch_job_continues_with_the_command_it_was_in(tmp_path, monkeypatch, capsys):
    """Two commands; the second stops at the signal (Preempted) the first time. The requeued job, a fresh
    `submit.py --slurm-task` process with the same SLURM_JOB_ID, must not run the first one again."""
    ran = tmp_path / "ran.txt"
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text(f"open({str(ran)!r}, 'a').write('first\\n')\n")
    second.write_text(f"open({str(ran)!r}, 'a').write('second\\n')\n"
                      f"import os\nfrom utils import preemption\n"
                      f"if open({str(ran)!r}).read().count('second') == 1:\n"
                      "    raise preemption.Preempted('stopped on request')\n")
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.txt'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    # slurm_task sets RANK, WORLD_SIZE and LOCAL_RANK itself: set here, monkeypatch removes them after the test
    for name, value in (("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_LOCALID", "0"), ("SLURM_JOB_ID", "42"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29999"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                        ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    from utils import preemption
    monkeypatch.setattr(preemption, "_enabled", False)  # run() enables it: undone when the test ends
    monkeypatch.setattr(preemption, "_requested", False)
    monkeypatch.setattr(submit, "launcher_commands", lambda *a: ([[str(first)], [str(second)]], []))
    monkeypatch.chdir(tmp_path)  # run() changes into the repository
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    args = ["--exp", "demo", "--mode", "run", "--gpus-per-node", "0", "--log-dir", str(tmp_path / "logs"),
            "--slurm-task"]
    assert submit.main(args) == 0  # stopped in the second command and requeued
    assert (tmp_path / "scontrol.txt").read_text() == "requeue 42\n"
    assert submit.main(args) == 0  # the requeued job
    assert ran.read_text().splitlines() == ["first", "second", "second"]
    assert not list((tmp_path / "logs").iterdir())  # done: nothing left to continue


def task_pids(folder: Path) -> list[int]:
    """The submitit task processes of the jobs in ``folder`` (its path is on their command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in cmdline and str(folder).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def run_interrupted_local_job(folder: Path, commands: list[list[str]], after_iters: int):
    """Run ``commands`` as one 2-task job; signal both tasks once the last command has logged ``after_iters``
    iterations, as Slurm does shortly before the time limit."""
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(tasks_per_node=2, timeout_min=60, gpus_per_node=0)
    job = executor.submit(submit.ClusterJob(commands))
    log = Path(flag(commands[-1], "--output-dir")) / "log.jsonl"
    deadline = time.time() + 1200  # generous: on a loaded 2-core machine a first iteration can take minutes
    while True:
        lines = log.read_text().splitlines() if log.is_file() else []
        if sum(json.loads(line)["kind"] == "iter" for line in lines if line.strip()) >= after_iters:
            break
        if job.done() or time.time() > deadline:
            job.cancel()
            pytest.fail(f"the last command did not log {after_iters} iterations; task 0 printed:\n"
                        f"{job.task(0).stdout()}")
        time.sleep(0.05)
    pids = task_pids(folder)
    assert len(pids) == 2 and not job.done(), "the job ended before it could be interrupted"
    for pid in pids:
        os.kill(pid, submitit.JobEnvironment._usr_sig())
    job.results()  # raises if a task failed
    return job


def test_a_stop_request_saves_at_the_next_iteration_boundary_and_stops(monkeypatch):
    from test_engine import FakeDataset, FakeMethod, run_epoch
    from utils import preemption
    saved = []

    def save_and_note(epoch, iteration, global_step):
        saved.append((epoch, iteration, global_step))
        preemption.request_stop()  # a signal arriving during the save at the 2nd iteration

    monkeypatch.setattr(preemption, "_requested", False)
    run_epoch(FakeMethod(), FakeDataset(), 0, save_every_iters=2, save_fn=save_and_note)  # not enabled: no stop
    assert saved == [(0, 2, 2), (0, 4, 4)] and preemption._requested  # 5 iterations, ran to the end
    saved.clear()
    monkeypatch.setattr(preemption, "_requested", False)
    monkeypatch.setattr(preemption, "_enabled", True)
    with pytest.raises(preemption.Preempted, match="after iteration 2 of epoch 3"):
        run_epoch(FakeMethod(), FakeDataset(), 3, save_every_iters=2, save_fn=save_and_note)
    # the periodic save; the request it received travels with the next iteration's finite-loss check (one
    # collective for both), so that iteration completes and the stop saves at its end
    assert saved == [(3, 2, 2), (3, 3, 3)]


@needs_submitit
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the task processes through /proc")
def test_interrupted_and_requeued_job_ends_with_the_weights_of_an_uninterrupted_run(tiny_demo, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "paper_scripts"), str(REPO)]))

    def command(out: Path) -> list[str]:
        return ["train_ssl.py", *tiny_demo_flags(tiny_demo), "--device", "cpu", "--model", "simclr", "--mode",
                "clip", "--net", "r3d", "--base-width", "4", "--batch-size", "1", "--epochs", "2", "--stride", "1",
                "--log-every", "1", "--save-freq", "0", "--output-dir", str(out), "--resume", "auto"]

    # One job of two commands: the same run twice (8 iterations per epoch); the second is interrupted
    # after its second iteration, and the requeued job continues with it, not with the first.
    job = run_interrupted_local_job(tmp_path / "jobs", [command(tmp_path / "reference"),
                                                        command(tmp_path / "interrupted")], after_iters=2)
    printed = job.task(0).stdout()
    assert "train_ssl.py: stopped on request after iteration" in printed
    assert f"resuming from {tmp_path / 'interrupted' / 'checkpoint.pth'}" in printed
    assert printed.count("starting afresh") == 2  # the finished first command did not run again
    reference = load_checkpoint(tmp_path / "reference" / "checkpoint.pth")
    resumed = load_checkpoint(tmp_path / "interrupted" / "checkpoint.pth")
    assert (resumed["epoch"], resumed["global_step"]) == (reference["epoch"], reference["global_step"]) == (2, 16)
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
