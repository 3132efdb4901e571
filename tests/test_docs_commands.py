"""Every command of README.md and docs/*.md that uses the demo's paths runs as written: the entry and
data-preparation scripts with --dry-run (in this process: one import of torch for all of them), the
launchers with DRY_RUN=1 PRINT_ONLY=1 (tests/test_paper_scripts.py dry-runs what they print). Usage
synopses ([--optional] flags, a|b choices, ...) are not commands."""
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCED = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)
INDENTED = re.compile(r"^    ((?:bash|python|torchrun) .*)$", re.M)  # markdown's indented code lines
ENTRY_SCRIPTS = ("train_ssl.py", "finetune.py", "test.py", "retrieve.py", "embed.py")
CHECKPOINT_FLAGS = ("--ckpt", "--pretrain")
SETUP = re.compile(r"^(\. |source |pip |python3? -m (venv|pip) )")
SYNOPSIS = re.compile(r"\[|\.\.\.|[{|]")  # [--optional flags], a|b, {choices}: a usage line, not a command


def shell_lines(block: str):
    """The words of each command line of a shell block: continuations joined, comments dropped, a quote that
    spans lines (python -c "...") kept whole."""
    pending = ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if words:
            yield words


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for each command of the pages' shell code, ``a && b`` split into its commands."""
    found = []
    for page in DOCS:
        text = page.read_text()
        lines = [words for block in FENCED.findall(text) for words in shell_lines(block)]
        lines += [shlex.split(line, comments=True) for line in INDENTED.findall(text)]
        for words in lines:
            command = []
            for word in [*words, "&&"]:
                if word == "&&":
                    found.append((page.name, shlex.join(command)))
                    command = []
                else:
                    command.append(word)
    return found


def demo_commands() -> list[tuple[str, str]]:
    return [(page, command) for page, command in documented_commands()
            if "demo" in command and not SETUP.match(command) and not SYNOPSIS.search(command)]


def load(script: str):
    spec = importlib.util.spec_from_file_location(f"documented_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def demo_cwd(tiny_demo, tmp_path, monkeypatch):
    """A working folder whose data/demo is the tiny demo, as data/demo is the demo in a clone."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(tiny_demo)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VSSL_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path


def test_the_pages_hold_the_demo_commands():
    commands = [command for _, command in demo_commands()]
    assert "bash paper_scripts/run/demo.sh" in commands  # the README's first command
    assert any(c.startswith("python process_data/src/extract_frame.py --video-root data/demo/videos")
               for c in commands)
    assert any(c.startswith("torchrun ") and "train_ssl.py --dataset demo" in c for c in commands)


def stand_in_checkpoints(args: list[str], cwd: Path) -> list[Path]:
    """A randomly initialised pretraining checkpoint at each --ckpt / --pretrain path that a documented command
    reads and an earlier documented command (not run for real here) would have written."""
    random_init = load("paper_scripts/random_init.py")
    made = []
    for flag, value in zip(args, args[1:]):
        if flag in CHECKPOINT_FLAGS and value.endswith(".pth") and not (cwd / value).exists():
            random_init.main(random_init.get_args_parser().parse_args(
                ["--net", "r3d", "--base-width", "8", "--num-frames", "8", "--size", "32", "--resize", "36", "48",
                 "--out", str(cwd / value)]))
            made.append(cwd / value)
    return made


def test_every_documented_demo_command_runs_as_written(demo_cwd, capsys):
    modules = {}
    ran, stand_ins = [], []
    for page, command in demo_commands():
        words = shlex.split(command)
        env = {}
        while re.match(r"^[A-Z_]+=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        where = f"{page}: {command}"
        if words[0] == "bash":
            launcher_env = {**os.environ, "OUTPUT_ROOT": str(demo_cwd / "output"), "NUM_GPUS": "0", **env,
                            "DRY_RUN": "1", "PRINT_ONLY": "1"}
            proc = subprocess.run(words, cwd=REPO, env=launcher_env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0 and "--dry-run" in proc.stdout, f"{where}\n{proc.stderr}"
        else:
            assert words[0] in ("python", "torchrun") and not env, f"{where}: a command of an unknown kind"
            i = next(i for i, word in enumerate(words) if word.endswith(".py"))
            script, args = words[i], [*words[i + 1:], "--dry-run"]
            module = modules.setdefault(script, load(script))
            stand_ins += stand_in_checkpoints(args, demo_cwd)
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                if Path(script).name in ENTRY_SCRIPTS:
                    parse = getattr(module, "parse_args", None) or module.get_args_parser().parse_args
                    module.main(parse(args))
                else:
                    assert module.main(args) == 0, f"{where}\n{capsys.readouterr().err}"
            json.loads(printed.getvalue())  # the resolved configuration
        ran.append(where)
    assert len(ran) >= 6, ran
    written = {p for p in (demo_cwd / "runs").rglob("*") if p.is_file()} if (demo_cwd / "runs").exists() else set()
    assert written == set(stand_ins) and not (demo_cwd / "output").exists()  # dry runs write nothing
