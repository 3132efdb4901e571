"""engine.launch.launch, the shared end of the entry scripts' main: --dry-run prints the resolved configuration,
a real run prints one configuration line (the flags that differ from the defaults), works inside the claimed
output folder and always stops the processes."""
import json

import pytest
import torch

import embed
import finetune
import retrieve
import test as test_script
import train_ssl
from engine import launch as launching
from engine.launch import changed_flags, launch
from engine.output_dir import OutputDirError, claim_output_dir, run_kind


def test_changed_flags_names_only_what_differs_from_the_defaults():
    parser = train_ssl.get_args_parser("iic")
    args = train_ssl.parse_args(["--model", "iic", "--epochs", "3", "--sync-bn", "--resize", "36", "40",
                                 "--output-dir", "runs/a b"])
    words = changed_flags(args, parser)
    assert words == "--epochs 3 --output-dir 'runs/a b' --sync-bn --resize 36 40 --model iic"
    # IIC's recipe is the default under --model iic: its --lr is not a change, the same lr under SimCLR is
    assert "--lr" not in words and "--lr 0.01" in changed_flags(train_ssl.parse_args(["--lr", "0.01"]),
                                                                 train_ssl.get_args_parser())
    assert changed_flags(train_ssl.parse_args([]), train_ssl.get_args_parser()) == ""


@pytest.fixture
def calls(monkeypatch):
    """Record init_distributed / cleanup instead of starting processes."""
    seen = []
    monkeypatch.setattr(launching, "init_distributed", lambda args: seen.append("init") or torch.device("cpu"))
    monkeypatch.setattr(launching, "cleanup", lambda: seen.append("cleanup"))
    return seen


def test_launch_dry_run_prints_the_full_configuration_and_does_no_work(calls, tmp_path, capsys):
    args = train_ssl.parse_args(["--dry-run", "--output-dir", str(tmp_path / "out"), "--epochs", "3"])
    assert launch(args, train_ssl.get_args_parser(), lambda device: pytest.fail("worked on a dry run"),
                  saved_in="x", dry_run_config=lambda: {"resolved": 1, "epochs": args.epochs}) is None
    assert json.loads(capsys.readouterr().out) == {"resolved": 1, "epochs": 3} and calls == []
    launch(args, train_ssl.get_args_parser(), lambda device: None, saved_in="x")  # by default: the flags
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs"] == 3 and printed["lr"] == 0.003 and len(printed) > 50


def test_launch_prints_one_configuration_line_and_works_in_the_claimed_folder(calls, tmp_path, capsys):
    out = tmp_path / "out"
    args = train_ssl.parse_args(["--output-dir", str(out), "--epochs", "3"])

    def work(device):
        assert device == torch.device("cpu") and calls == ["init"]
        with pytest.raises(OutputDirError, match="in use"), claim_output_dir(out, run_kind(args)):
            pass  # launch holds the folder
        return "result"

    assert launch(args, train_ssl.get_args_parser(), work, saved_in=str(out / "config.json"),
                  claim_output=True) == "result"
    assert calls == ["init", "cleanup"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration: flags that differ from the defaults: --epochs 3 --output-dir {out} ")
    assert f"(every flag goes to {out / 'config.json'}; git " in lines[0]


def test_launch_stops_the_processes_when_the_work_fails(calls, tmp_path):
    args = train_ssl.parse_args(["--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="bad flag"):
        launch(args, train_ssl.get_args_parser(), lambda device: (_ for _ in ()).throw(ValueError("bad flag")),
               saved_in="x")
    assert calls == ["init", "cleanup"]


@pytest.mark.parametrize("script", [train_ssl, finetune, test_script, retrieve])
def test_every_entry_script_ends_through_launch(script, monkeypatch):
    """Each script's main hands its work to launch with its own parser and says where the flags are kept."""
    seen = {}

    def fake_launch(args, parser, work, *, saved_in, **kwargs):
        seen.update(parser=parser, saved_in=saved_in)
        raise StopIteration

    monkeypatch.setattr(script, "launch", fake_launch)
    for name in ("read_source", "check_writable", "inherit_flags", "check_modality", "checkpoint_config",
                 "check_args"):
        if hasattr(script, name):
            monkeypatch.setattr(script, name, lambda *a, **k: {})
    parser = script.get_args_parser()
    required = ["--ckpt", "c.pth"] if script in (test_script, retrieve) else []
    args = parser.parse_args([*required, "--output-dir", "runs/x"] +
                             (["--pretrain", "none"] if script is finetune else []))
    with pytest.raises(StopIteration):
        script.main(args)
    assert seen["parser"].prog == parser.prog and "runs/x" in seen["saved_in"]


@pytest.mark.parametrize("script", [train_ssl, finetune, test_script, retrieve, embed])
def test_usage_names_the_program_and_only_the_flags_it_reads(script, capsys):
    parser = script.get_args_parser()
    assert parser.description and parser.description not in parser.format_usage()
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-such-flag"])
    error = capsys.readouterr().err
    assert error.startswith(f"usage: {parser.prog} ") and parser.description not in error
    training_only = {"--max-bad-videos", "--per-frame-jitter", "--no-hflip"}
    listed = {flag for action in parser._actions for flag in action.option_strings}
    assert training_only.isdisjoint(listed) == (script in (test_script, retrieve, embed))
