"""Submit a launcher's commands to Slurm: one task per GPU, checkpointed and requeued at the time limit.

    python paper_scripts/submit.py --exp simclr_clip-sr-tc_r21d_ucf101 --mode pretrain --nodes 2 --gpus-per-node 4 \
        --partition gpu --time 24:00:00 --account myproject
    python paper_scripts/submit.py ... --print-sbatch > job.sbatch   # a plain sbatch script, without submitit

The commands are those of `paper_scripts/<mode>/<exp>.sh` for NODES × GPUS_PER_NODE processes, as the
launcher prints them with PRINT_ONLY=1: the flags and the per-GPU batch come from the one table in
common.sh (OUTPUT_ROOT and VSSL_DATA_ROOT are read here, as by the launchers; arguments after `--`
are appended to every command). Every Slurm task runs them in turn with RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT set from Slurm's allocation. Shortly before the time limit (and on
preemption, where the cluster sends the job its signal) every process stops at the next iteration
boundary, the training checkpoint is written, and the job requeues itself; the requeued job resumes
with --resume auto and gives the weights of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("pretrain", "finetune", "finetune_hmdb", "test", "test_hmdb", "test_retrieval", "run")
# entry scripts that train, write OUTPUT_DIR/checkpoint.pth and resume from it with --resume auto
TRAINING_SCRIPTS = ("train_ssl.py", "finetune.py")
SBATCH_SIGNAL = "USR1"  # the plain sbatch script's; submitit uses its own (USR2 unless configured)
BASE_PORT = 20000


def time_limit_s(text: str) -> int:
    """Slurm's [D-]HH:MM:SS in seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", text)
    if not match:
        raise ValueError(f"--time {text!r}: give HH:MM:SS or D-HH:MM:SS (e.g. 24:00:00)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_time(text: str) -> int:
    """Slurm's [D-]HH:MM:SS as minutes (rounded up)."""
    return -(-time_limit_s(text) // 60)


def launcher_commands(mode: str, exp: str, world_size: int, extra: list[str] = ()) -> tuple[list[list[str]], list[str]]:
    """The launcher's python commands for ``world_size`` processes, each as [script, *args], and the
    scripts of those it runs as single-process helpers (data preparation, tables) instead of with torchrun."""
    launcher = REPO / "paper_scripts" / mode / f"{exp}.sh"
    if not launcher.is_file():
        known = sorted(p.stem for p in (REPO / "paper_scripts" / mode).glob("*.sh"))
        raise ValueError(f"--exp {exp} --mode {mode}: no launcher {launcher.relative_to(REPO)}"
                         + (f"; experiments of this mode: {', '.join(known)}" if known else ""))
    env = {**os.environ, "PRINT_ONLY": "1", "NUM_GPUS": str(world_size), "DRY_RUN": "0"}
    done = subprocess.run(["bash", str(launcher), *extra], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise ValueError(f"{launcher.relative_to(REPO)} for {world_size} processes: {reason}")
    commands, helpers = [], set()
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["torchrun"]:  # torchrun --standalone --nproc_per_node N script args...
            words = words[4:]
            # a requeued job must continue where it stopped, whatever the arguments after `--` said
            commands.append(words + ["--resume", "auto"] if words[0] in TRAINING_SCRIPTS else words)
        else:  # PYTHON script args...
            commands.append(words[1:])
            helpers.add(words[1])
    return commands, sorted(helpers)


@dataclass
class ClusterJob:
    """What every Slurm task runs: the commands from ``next_command`` on, in this process.

    ``helpers`` are single-process commands (run by rank 0 only). Under submitit, ``checkpoint`` hands
    the job back to submitit for requeueing; in a plain sbatch job, rank 0 calls `scontrol requeue`.
    """

    commands: list[list[str]]
    helpers: list[str] = field(default_factory=list)
    next_command: int = 0

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on rank 0 before requeueing: the requeued job continues at this command."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)

    def __call__(self) -> None:
        """Entry point of a submitit task."""
        import submitit
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        signum = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(signum)

        def requeue() -> None:  # submitit's own handler: checkpoint() on rank 0, requeue, exit
            signal.signal(signum, submitit_handler)
            signal.raise_signal(signum)

        self.run(signum, requeue, submitit_handler)

    def run(self, signum: int, requeue, on_signal_outside_training) -> None:
        os.chdir(REPO)
        sys.path.insert(0, str(REPO))
        from utils import preemption
        preemption.enable()
        rank, base_port = int(os.environ["RANK"]), int(os.environ["MASTER_PORT"])
        training = False

        def on_signal(number, frame):
            if training:  # stop at the next iteration boundary, after the checkpoint
                preemption.request_stop()
            else:  # nothing to save: requeue at once and rerun this command
                on_signal_outside_training(number, frame)

        signal.signal(signum, on_signal)
        for index in range(self.next_command, len(self.commands)):
            self.next_command = index
            script, *args = self.commands[index]
            if script in self.helpers and rank != 0:
                continue
            training = script in TRAINING_SCRIPTS
            os.environ["MASTER_PORT"] = str(base_port + index)  # a fresh rendezvous for every command
            sys.argv = [script, *args]
            try:
                runpy.run_path(script, run_name="__main__")
            except preemption.Preempted as stopped:
                print(f"{script}: {stopped}; requeueing", flush=True)
                if rank == 0:
                    requeue()
                return
            training = False
            if preemption.stop_requested():  # asked during the last iteration: the command is complete
                self.next_command = index + 1
                if rank == 0:
                    requeue()
                return
        self.next_command = len(self.commands)


def progress_file(log_dir: Path) -> Path:
    """Where the plain sbatch job keeps the index of the command to continue at: a requeued job keeps its id,
    and its tasks start this script afresh (under submitit, the pickled ClusterJob carries it instead)."""
    return log_dir / f".next_command.{os.environ['SLURM_JOB_ID']}"


def slurm_task(job: ClusterJob, log_dir: Path) -> None:
    """A task of the plain sbatch script: the distributed environment from Slurm's, requeue with scontrol, the
    commands from the one it was in (``progress_file``)."""
    for ours, slurm in (("RANK", "SLURM_PROCID"), ("WORLD_SIZE", "SLURM_NTASKS"), ("LOCAL_RANK", "SLURM_LOCALID")):
        if slurm not in os.environ:
            raise ValueError(f"--slurm-task runs inside `srun` of a Slurm job, but {slurm} is not set")
        os.environ[ours] = os.environ[slurm]
    for needed in ("MASTER_ADDR", "MASTER_PORT"):
        if needed not in os.environ:
            raise ValueError(f"--slurm-task: {needed} is not set; the sbatch script of --print-sbatch exports it")

    progress = progress_file(log_dir)
    if progress.is_file():
        job.next_command = int(progress.read_text())

    def requeue() -> None:
        progress.parent.mkdir(parents=True, exist_ok=True)
        tmp = progress.with_name(progress.name + ".tmp")  # renamed: a job killed meanwhile never reads half
        tmp.write_text(f"{job.next_command}\n")
        os.replace(tmp, progress)
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)

    def exit_for_requeue(number, frame):
        if os.environ["RANK"] == "0":
            requeue()
        sys.exit(0)

    job.run(getattr(signal, f"SIG{SBATCH_SIGNAL}"), requeue, exit_for_requeue)
    if os.environ["RANK"] == "0" and job.next_command == len(job.commands):
        progress.unlink(missing_ok=True)


def sbatch_script(args: argparse.Namespace, tasks_per_node: int, log_dir: Path) -> str:
    """A plain sbatch script whose tasks run this file with --slurm-task."""
    flags = [f"--exp {args.exp}", f"--mode {args.mode}", f"--nodes {args.nodes}",
             f"--gpus-per-node {args.gpus_per_node}"]
    extra = " -- " + shlex.join(args.extra) if args.extra else ""
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={args.exp}-{args.mode}",
             f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={tasks_per_node}",
             f"#SBATCH --cpus-per-task={args.cpus_per_task}",
             f"#SBATCH --time={args.time}",
             f"#SBATCH --signal={SBATCH_SIGNAL}@{args.signal_delay_s}",
             "#SBATCH --requeue",
             "#SBATCH --open-mode=append",
             f"#SBATCH --output={log_dir}/%x-%j.out"]
    if args.gpus_per_node:
        lines.insert(4, f"#SBATCH --gpus-per-node={args.gpus_per_node}")
    lines += [f"#SBATCH --partition={args.partition}"] * bool(args.partition)
    lines += [f"#SBATCH --account={args.account}"] * bool(args.account)
    lines += ["",
              "# One task per GPU; each stops at an iteration boundary on the signal, writes its checkpoint, and",
              "# rank 0 requeues the job, which resumes with --resume auto.",
              f"export OUTPUT_ROOT={shlex.quote(os.environ.get('OUTPUT_ROOT', str(REPO / 'output')))}",
              f"export VSSL_DATA_ROOT={shlex.quote(os.environ.get('VSSL_DATA_ROOT', str(REPO / 'data')))}",
              'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
              f"export MASTER_PORT=$(( {BASE_PORT} + SLURM_JOB_ID % 20000 ))",
              f"cd {shlex.quote(str(REPO))}",
              f"srun {shlex.quote(sys.executable)} paper_scripts/submit.py {' '.join(flags)} --log-dir "
              f"{shlex.quote(str(log_dir))} --slurm-task{extra}", ""]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Submit paper_scripts/<mode>/<exp>.sh to Slurm through submitit (or print a plain sbatch "
                    "script)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--exp", required=True, help="experiment of common.sh's table (a launcher's file name)")
    parser.add_argument("--mode", required=True, choices=MODES, help="launcher folder; run: every mode in turn")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8, help="one task per GPU (0: one CPU task per node)")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default="24:00:00", help="time limit of each (re)queued job, [D-]HH:MM:SS")
    parser.add_argument("--account", default=None)
    parser.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task (data-loading workers)")
    parser.add_argument("--signal-delay-s", type=int, default=180,
                        help="signal the job this long before its time limit (an iteration and a save must fit)")
    parser.add_argument("--max-requeues", type=int, default=100,
                        help="submitit gives up after this many time-limit requeues (preemptions do not count)")
    parser.add_argument("--log-dir", default=None,
                        help="Slurm and submitit logs; default: OUTPUT_ROOT/slurm/<exp>-<mode>")
    parser.add_argument("--print-sbatch", action="store_true",
                        help="print a plain sbatch script and submit nothing (its log folder is created now: Slurm "
                             "does not create it)")
    parser.add_argument("--slurm-task", action="store_true", help=argparse.SUPPRESS)  # the sbatch script's tasks
    parser.add_argument("extra", nargs="*", help="after --: arguments appended to every command (e.g. --workers 8)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 0:
        raise ValueError(f"--nodes must be at least 1 and --gpus-per-node at least 0 (got {args.nodes}, "
                         f"{args.gpus_per_node})")
    limit_s = time_limit_s(args.time)
    if not 0 < args.signal_delay_s < limit_s:
        raise ValueError(f"--signal-delay-s {args.signal_delay_s} must be positive and shorter than --time "
                         f"{args.time} ({limit_s} s), or the job would be signalled before it does any work: give a "
                         "longer --time or a shorter --signal-delay-s")
    tasks_per_node = max(args.gpus_per_node, 1)
    job = ClusterJob(*launcher_commands(args.mode, args.exp, args.nodes * tasks_per_node, args.extra))
    output_root = Path(os.environ.get("OUTPUT_ROOT", REPO / "output")).resolve()
    log_dir = Path(args.log_dir or output_root / "slurm" / f"{args.exp}-{args.mode}").resolve()
    if args.slurm_task:
        slurm_task(job, log_dir)
        return 0
    if args.print_sbatch:
        log_dir.mkdir(parents=True, exist_ok=True)  # Slurm opens the --output file there before the script runs
        print(sbatch_script(args, tasks_per_node, log_dir), end="")
        return 0
    if shutil.which("sbatch") is None:
        raise ValueError("no sbatch on this machine: run submit.py on a Slurm login node (or --print-sbatch to "
                         "write a script)")
    import submitit
    executor = submitit.AutoExecutor(folder=log_dir, cluster="slurm", slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(
        name=f"{args.exp}-{args.mode}", nodes=args.nodes, tasks_per_node=tasks_per_node,
        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, timeout_min=parse_time(args.time),
        slurm_signal_delay_s=args.signal_delay_s,
        **{f"slurm_{k}": v for k, v in (("partition", args.partition), ("account", args.account)) if v})
    submitted = executor.submit(job)
    print(f"submitted job {submitted.job_id} ({len(job.commands)} command(s), {args.nodes} node(s) × {tasks_per_node} "
          f"task(s)); logs in {log_dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as error:
        sys.exit(f"error: {error}")
