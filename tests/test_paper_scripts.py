"""The launchers in paper_scripts/: every python command they issue parses and resolves with --dry-run,
`run` stops at the first failure, GPU counts split the global batch; and collect_results.py's table."""
import importlib.util
import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from paper_scripts import collect_results

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "paper_scripts"
MODES = ("pretrain", "finetune", "finetune_hmdb", "test", "test_hmdb", "test_retrieval")
ENTRY_SCRIPTS = ("train_ssl.py", "finetune.py", "test.py", "retrieve.py")
TABLE = collect_results.read_experiment_table()
DEMO_DATA_SCRIPTS = ("process_data/src/make_demo_data.py", "process_data/src/extract_frame.py",
                     "process_data/src/write_csv.py")
MINIATURE_LAUNCHERS = ("miniature", "miniature_mutants", "miniature_calibration", "miniature_sr_variants")
REFERENCES = ("colour-stats", "motion-stats")
MODE_OF_SCRIPT = {"train_ssl.py": "pretrain", "finetune.py": "finetune", "test.py": "test",
                  "retrieve.py": "test_retrieval"}


def launch(mode, exp, tmp_path, *args, **env):
    """Run one launcher; returns the completed process (commands on stdout in PRINT_ONLY mode)."""
    full_env = {**os.environ, "OUTPUT_ROOT": str(tmp_path / "out"), "VSSL_DATA_ROOT": str(tmp_path / "data"),
                "NUM_GPUS": "0", **env}
    return subprocess.run(["bash", str(SCRIPTS / mode / f"{exp}.sh"), *args], env=full_env, capture_output=True,
                          text=True, timeout=60)


def printed_commands(mode, exp, tmp_path, **env):
    proc = launch(mode, exp, tmp_path, PRINT_ONLY="1", DRY_RUN="1", **env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def split_entry(cmd):
    """(entry script, its arguments) of a python or torchrun command line."""
    i = next(i for i, a in enumerate(cmd) if a.endswith(".py"))
    return cmd[i], cmd[i + 1:]


def load_entry(script):
    spec = importlib.util.spec_from_file_location(f"entry_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launchers():
    return [(mode, exp) for exp, (_, _, _, data) in sorted(TABLE.items()) for mode in (*MODES, "run")
            if (SCRIPTS / mode / f"{exp}.sh").exists()]


def test_every_experiment_has_every_mode():
    assert {"simclr_clip-sr-tc_r21d_k400", "demo", "demo_baseline", "iic_demo", "iic_repeat_res_r3d_ucf101",
            "iic_shuffle_v_r3d_ucf101"} <= set(TABLE)
    for exp, (_, _, _, data) in TABLE.items():
        modes = ("pretrain", "finetune", "test", "test_retrieval") if data == "demo" else (*MODES, "run")
        missing = [m for m in modes if not (SCRIPTS / m / f"{exp}.sh").is_file()]
        assert not missing, f"{exp} lacks launchers for {missing}"
    for mode in (*MODES, "run"):
        for path in (SCRIPTS / mode).glob("*.sh"):
            assert path.stem in TABLE or (mode == "run" and path.stem in MINIATURE_LAUNCHERS), \
                f"{path} names no experiment of common.sh"


def test_every_launcher_command_passes_its_dry_run(tmp_path, capsys):
    commands = []
    for mode, exp in launchers():
        if mode != "run":
            commands += [(mode, exp, cmd) for cmd in printed_commands(mode, exp, tmp_path)]
    assert {split_entry(c)[0] for _, _, c in commands} == set(ENTRY_SCRIPTS)
    for exp in ("demo", "demo_baseline", "iic_demo"):  # their own pipeline: data, references, table
        demo_commands = printed_commands("run", exp, tmp_path)
        helpers = dict(split_entry(c) for c in demo_commands if split_entry(c)[0] not in ENTRY_SCRIPTS)
        assert list(helpers) == [*DEMO_DATA_SCRIPTS, "paper_scripts/colour_reference.py", "paper_scripts/random_init.py",
                                 "paper_scripts/reversal_sensitivity.py", "paper_scripts/collect_results.py",
                                 "paper_scripts/make_figures.py"]
        collect_results.get_args_parser().parse_args(helpers["paper_scripts/collect_results.py"])
        load_entry("train_ssl.py").parse_args(helpers["paper_scripts/colour_reference.py"])
        for script in ("paper_scripts/random_init.py", "paper_scripts/make_figures.py",
                       "paper_scripts/reversal_sensitivity.py"):
            load_entry(script).get_args_parser().parse_args(helpers[script])
        commands += [("run", exp, c) for c in demo_commands if split_entry(c)[0] in ENTRY_SCRIPTS]

    # Later modes read the checkpoints of earlier ones even in a dry run: stand-ins with the keys they read.
    for _, _, cmd in commands:
        args = split_entry(cmd)[1]
        for flag in ("--pretrain", "--ckpt"):
            # --pretrain none: random init; --ckpt colour-stats / motion-stats: the no-learning references
            if flag in args and args[args.index(flag) + 1] not in ("none", *REFERENCES):
                path = Path(args[args.index(flag) + 1])
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": {"encoder.backbone.stem.weight": torch.zeros(1)}, "config": {}}, path)

    modules = {script: load_entry(script) for script in ENTRY_SCRIPTS}
    for mode, exp, cmd in commands:
        script, args = split_entry(cmd)
        assert args[-1] == "--dry-run"
        module = modules[script]
        parser = module.get_args_parser()
        parser.allow_abbrev = False  # a launcher must spell every flag out: a typo must not pass as a prefix
        module.main(parser.parse_args(args))  # argparse exits (fails) on a bad flag
        config = json.loads(capsys.readouterr().out)
        out_dir = Path(config["output_dir"])
        if mode == "run":  # one seed of the miniature: <root>/demo/<method>/seed0/<step>
            method_dir = out_dir.relative_to(tmp_path / "out" / "demo").parts
            assert method_dir[1:] == ("seed0", {"finetune.py": "finetune", "test.py": "test"}.get(
                script, MODE_OF_SCRIPT[script]))
            assert config["dataset"] == str(tmp_path / "data" / "demo" / "csv")
            continue
        assert out_dir == tmp_path / "out" / exp / mode
        model, method_mode, net, data = TABLE[exp]
        if mode == "pretrain":
            mode_of_run = f"{config['intra_neg']}-{config['modality']}" if model == "iic" else config["mode"]
            assert (config["model"], mode_of_run, config["net"], config["dataset"]) == (model, method_mode, net, data)
        else:
            assert config["dataset"] == ("hmdb51" if mode.endswith("_hmdb") else "demo" if data == "demo" else "ucf101")


def test_published_recipe(tmp_path):
    (pretrain,) = printed_commands("pretrain", "simclr_clip-sr-tc_r21d_k400", tmp_path, NUM_GPUS="8")
    assert pretrain[:4] == ["torchrun", "--standalone", "--nproc_per_node", "8"]
    text = " ".join(pretrain)
    for flags in ("--epochs 200", "--schedule 120 160", "--lr 0.003", "--weight-decay 1e-4", "--batch-size 8",
                  "--num-frames 16", "--stride 4", "--size 112", "--save-freq 10"):
        assert flags in text
    (single,) = printed_commands("pretrain", "moco_clip_r21d_ucf101", tmp_path)
    assert "--batch-size 64" in " ".join(single) and single[0] != "torchrun"
    (k400,) = printed_commands("finetune", "simclr_clip-sr-tc_r21d_k400", tmp_path)
    (ucf,) = printed_commands("finetune_hmdb", "simclr_clip-sr-tc_r3d_ucf101", tmp_path)
    assert "--epochs 150 --schedule 50 100" in " ".join(k400) and "--epochs 100 --schedule 30 60 80" in " ".join(ucf)
    assert k400[k400.index("--pretrain") + 1].endswith("simclr_clip-sr-tc_r21d_k400/pretrain/epoch189.pth")


def test_iic_recipe_and_protocol(tmp_path):
    (pretrain,) = printed_commands("pretrain", "iic_shuffle_u_r3d_ucf101", tmp_path, NUM_GPUS="2")
    text = " ".join(pretrain)
    for flags in ("--model iic", "--intra-neg shuffle --modality u", "--net r3d", "--epochs 240",
                  "--schedule 45 90 125 160 --lr-gamma 0.2", "--lr 0.01", "--num-frames 16", "--batch-size 8"):
        assert flags in text
    (finetune,) = printed_commands("finetune", "iic_shuffle_u_r3d_ucf101", tmp_path)
    assert "--modality u" in " ".join(finetune)
    assert finetune[finetune.index("--pretrain") + 1].endswith("iic_shuffle_u_r3d_ucf101/pretrain/checkpoint.pth")
    (retrieval,) = printed_commands("test_retrieval", "iic_repeat_res_r3d_ucf101", tmp_path)
    assert "--layer conv5 --merge --stride 1" in " ".join(retrieval)


@pytest.mark.parametrize("exp, method", [("demo", "dualvar"), ("demo_baseline", "simclr"), ("iic_demo", "iic")])
def test_demo_is_one_seed_of_the_miniature(tmp_path, exp, method):
    commands = [split_entry(cmd) for cmd in printed_commands("run", exp, tmp_path)
                if any(a.endswith(".py") for a in cmd)]
    finetunes = [args for script, args in commands if script == "finetune.py"]
    assert [args[args.index("--pretrain") + 1] for args in finetunes] == [
        "none", str(tmp_path / "out" / "demo" / method / "seed0" / "pretrain" / "checkpoint.pth")]
    for args in finetunes:
        assert args.count("--stride") == 1 and args[args.index("--stride") + 1] == recipe_value("DEMO_STRIDE") == "8"
    miniature = [split_entry(cmd) for cmd in printed_commands("run", "miniature", tmp_path, SEEDS="0",
                                                              MINI_METHODS=f"random {method}", MINI_SUPERVISED="0")]
    def rename(args):
        return [a.replace(str(tmp_path / "out" / "miniature"), str(tmp_path / "out" / "demo"))
                .replace("=miniature/", "=demo/") for a in args]
    assert [(script, rename(args)) for script, args in miniature] == commands


def miniature_commands(tmp_path, **env):
    return [split_entry(cmd) for cmd in printed_commands("run", "miniature", tmp_path, **env)]


def flag(args, name):
    return args[args.index(name) + 1]


def last_flag(args, name):
    """The value argparse keeps: the last one given."""
    return args[len(args) - args[::-1].index(name)]


def recipe_value(name):
    """A shell variable of common.sh, as the launchers see it."""
    proc = subprocess.run(["bash", "-c", f'source "{SCRIPTS / "common.sh"}"; echo "${name}"'], capture_output=True,
                          text=True, env={**os.environ, "NUM_GPUS": "0"}, timeout=30)
    return proc.stdout.strip()


def test_miniature_runs_every_method_and_seed_on_one_recipe(tmp_path):
    commands = miniature_commands(tmp_path)
    pretrains = [args for script, args in commands if script == "train_ssl.py"]
    assert len(pretrains) == 2 * 3  # simclr, dualvar x seeds 0 1 2 (iic on request)
    assert sorted({flag(a, "--seed") for a in pretrains}) == ["0", "1", "2"]
    assert sorted({flag(a, "--model") + " " + flag(a, "--mode") for a in pretrains}) == ["simclr clip",
                                                                                      "simclr clip-sr-tc"]
    for name in ("--steps", "--batch-size", "--lr", "--optimizer", "--num-frames", "--size", "--base-width",
                 "--clip-input", "--stride"):
        assert len({flag(a, name) for a in pretrains}) == 1, f"{name} differs between methods"
    pretrain_steps, finetune_steps = int(recipe_value("MINI_PRETRAIN_STEPS")), int(recipe_value("MINI_FINETUNE_STEPS"))
    assert {flag(a, "--steps") for a in pretrains} == {str(pretrain_steps)}
    assert {flag(a, "--clip-input") for a in pretrains} == {"diff"}  # the calibrated input
    retrievals = [args for script, args in commands if script == "retrieve.py"]
    assert len(retrievals) == 2 + 3 * 3  # colour and motion statistics once; random, simclr, dualvar per seed
    assert len({(flag(a, "--layer"), flag(a, "--stride")) for a in retrievals}) == 1
    assert not any("--clip-input" in a for a in retrievals)  # each takes its checkpoint's input
    finetunes = [args for script, args in commands if script == "finetune.py"]
    assert len(finetunes) == 4 * 3  # 3 methods and supervised training from scratch, per seed
    assert {last_flag(a, "--steps") for a in finetunes if "/supervised/" not in flag(a, "--output-dir")} == {
        str(finetune_steps)}
    # from scratch the recipe names the input; from a checkpoint, the checkpoint's is taken
    assert all(("--clip-input" in a) == (flag(a, "--pretrain") == "none") for a in finetunes)
    supervised = [a for a in finetunes if "/supervised/" in flag(a, "--output-dir")]
    assert [last_flag(a, "--steps") for a in supervised] == [str(pretrain_steps + finetune_steps)] * 3
    randoms = [args for script, args in commands if script == "paper_scripts/random_init.py"]
    assert {flag(a, "--clip-input") for a in randoms} == {"diff"}
    reversals = [args for script, args in commands if script == "paper_scripts/reversal_sensitivity.py"]
    assert len(reversals) == 4 * 3 and all(flag(a, "--out").endswith("reversal.json") for a in reversals)
    collect = next(args for script, args in commands if script == "paper_scripts/collect_results.py")
    assert "--seeds" in collect and flag(collect, "--summary") == str(tmp_path / "out" / "miniature" / "summary.json")
    assert flag(collect, "--direction-pairs") == str(tmp_path / "data" / "demo" / "splits" / "arrow_of_time_pairs.txt")


def test_mutants_plant_each_bug_in_the_miniature_recipe_and_compare_with_the_correct_code(tmp_path):
    commands = [split_entry(cmd) for cmd in printed_commands("run", "miniature_mutants", tmp_path)]
    pretrains = [args for script, args in commands if script == "train_ssl.py"]
    planted = {flag(a, "--plant-bug"): flag(a, "--mode") for a in pretrains if "--plant-bug" in a}
    assert planted == {"positive-other-video": "clip", "sr-wrong-permutation": "clip-sr-tc",
                       "tc-other-video": "clip-sr-tc"}
    correct = [a for a in pretrains if "--plant-bug" not in a]
    assert len(correct) == 2 * 3  # the correct runs, shared with run/miniature.sh's folders
    for name in ("--steps", "--lr", "--clip-input", "--stride", "--batch-size"):
        assert len({flag(a, name) for a in pretrains}) == 1, f"{name} differs between the bugs and the correct code"
    assert not any("/supervised/" in flag(a, "--output-dir") for s, a in commands if s == "finetune.py")
    collect = next(args for script, args in commands if script == "paper_scripts/collect_results.py")
    compare = collect[collect.index("--compare") + 1:]
    assert compare[:3] == ["simclr_positive_bug=simclr", "dualvar_sr_bug=dualvar", "dualvar_tc_bug=dualvar"]
    assert flag(collect, "--out") == str(tmp_path / "out" / "miniature" / "mutants.md")
    collect_results.get_args_parser().parse_args(collect)


def test_sr_variants_compare_the_published_term_with_the_negative_variant_in_one_recipe(tmp_path):
    commands = [split_entry(cmd) for cmd in printed_commands("run", "miniature_sr_variants", tmp_path, SEEDS="0")]
    pretrains = {flag(a, "--output-dir").split("/")[-3]: a for s, a in commands if s == "train_ssl.py"}
    assert sorted(pretrains) == ["dualvar", "dualvar_negative", "simclr"]
    assert flag(pretrains["dualvar_negative"], "--sr-variant") == "negative"
    assert "--sr-variant" not in pretrains["dualvar"]  # the published default
    drop = lambda a: [x for x in a if x not in ("--sr-variant", "negative") and "/dualvar" not in x]  # noqa: E731
    assert drop(pretrains["dualvar_negative"]) == drop(pretrains["dualvar"])
    collect = next(args for script, args in commands if script == "paper_scripts/collect_results.py")
    assert flag(collect, "--out").endswith("miniature/sr_variants.md")


def test_calibration_runs_no_self_supervised_method(tmp_path):
    commands = [split_entry(cmd) for cmd in printed_commands("run", "miniature_calibration", tmp_path, SEEDS="0")]
    scripts = {script for script, _ in commands}
    assert "train_ssl.py" not in scripts
    finetunes = [args for script, args in commands if script == "finetune.py"]
    assert {flag(a, "--pretrain") for a in finetunes} == {"none"}
    assert sorted((last_flag(a, "--clip-input"), last_flag(a, "--stride"), last_flag(a, "--steps")) for a in finetunes) \
        == sorted([("rgb", "4", "1072"), ("diff", "4", "1072"), ("diff", "8", "1072"), ("diff", "4", "2144"),
                   ("diff", "8", "2144")])
    collects = [args for script, args in commands if script == "paper_scripts/collect_results.py"]
    assert all("--gate" in a for a in collects) and len(collects) == 3  # rgb_s4, diff_s4, diff_s8


def test_miniature_recipe_does_not_depend_on_the_data_set(tmp_path):
    own = tmp_path / "mydata"
    (own / "videos").mkdir(parents=True)
    (own / "splits").mkdir()
    (own / "splits" / "classInd.txt").write_text("1 A\r\n")
    demo = miniature_commands(tmp_path, SEEDS="0")
    mine = miniature_commands(tmp_path, SEEDS="0", MINI_DATA=str(own))
    (own / "splits" / "arrow_of_time_pairs.txt").write_text("A B\r\n")
    mine_with_pairs = miniature_commands(tmp_path, SEEDS="0", MINI_DATA=str(own))
    to_demo = lambda args: [a.replace(str(own), str(tmp_path / "data" / "demo")) for a in args]  # noqa: E731
    # the same commands but for the data paths, and no demo generation; only frame extraction keeps the
    # native size of the demo's small frames, and the figures name the data folder their own way; the table's
    # direction columns need the data set's arrow-of-time pairs, which the demo has and this set lists or not
    differ = ("process_data/src/make_demo_data.py", "process_data/src/extract_frame.py", "paper_scripts/make_figures.py")
    assert [(s, to_demo(a)) for s, a in mine_with_pairs if s not in differ] == [(s, a) for s, a in demo
                                                                              if s not in differ]
    collect = next(a for s, a in mine if s == "paper_scripts/collect_results.py")
    assert "--direction-pairs" not in collect
    assert "process_data/src/make_demo_data.py" not in [s for s, _ in mine]
    proc = launch("run", "miniature", tmp_path, PRINT_ONLY="1", MINI_DATA=str(tmp_path / "missing"))
    assert proc.returncode != 0 and "MINI_DATA" in proc.stderr


def test_global_batch_must_split_over_the_gpus(tmp_path):
    proc = launch("pretrain", "simclr_clip_r21d_ucf101", tmp_path, PRINT_ONLY="1", NUM_GPUS="3")
    assert proc.returncode != 0 and "NUM_GPUS=3" in proc.stderr and not proc.stdout
    proc = launch("pretrain", "simclr_clip_r21d_ucf101", tmp_path, PRINT_ONLY="1", NUM_GPUS="two")
    assert proc.returncode != 0 and "NUM_GPUS=two" in proc.stderr


@pytest.mark.parametrize("fail", [False, True])
def test_run_goes_through_every_mode_and_stops_at_the_first_failure(tmp_path, fail):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$1" >> {log}\nexit {1 if fail else 0}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = launch("run", "moco_clip-sr_r21d_ucf101", tmp_path, "--workers", "1", PYTHON=str(fake))
    calls = log.read_text().split()
    if fail:
        assert proc.returncode != 0 and calls == ["train_ssl.py"]
    else:
        assert proc.returncode == 0, proc.stderr
        assert calls == ["train_ssl.py", "finetune.py", "finetune.py", "test.py", "test.py", "retrieve.py"]


# ---------------------------------------------------------------- collect_results.py

def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_collect_results_puts_published_numbers_beside_ours(tmp_path, capsys):
    root = tmp_path / "out"
    exp = root / "simclr_clip-sr-tc_r21d_k400"
    write_json(exp / "test" / "test_results.json", {"top1": 80.25, "top5": 95.0})
    write_json(exp / "test_retrieval" / "retrieval.json", {f"R@{k}": 40.0 + k for k in (1, 5, 10, 20, 50)})
    write_json(root / "moco_clip_r21d_ucf101" / "test_hmdb" / "test_results.json", {"top1": 33.33})
    (root / "simclr_clip_r21d_ucf101" / "pretrain").mkdir(parents=True)  # no results yet: no row
    text = collect_results.main(collect_results.get_args_parser().parse_args(
        ["--output-root", str(root), "--out", str(tmp_path / "table.md")]))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "experiment" not in line]
    assert len(rows) == 2
    moco, k400 = (r.split(" | ") for r in rows)
    assert k400[:4] == ["| simclr_clip-sr-tc_r21d_k400", "simclr clip-sr-tc", "R(2+1)D-10", "k400"]
    assert k400[4:] == ["80.2 (82.0)", "– (51.2)", "41.0 (46.7)", "45.0 (63.1)", "50.0 (69.7)", "60.0 (78.0)",
                        "90.0 (87.8)", "[test](out/simclr_clip-sr-tc_r21d_k400/test/card.json) "
                        "[retrieval](out/simclr_clip-sr-tc_r21d_k400/test_retrieval/card.json) |"]
    assert moco[:6] == ["| moco_clip_r21d_ucf101", "moco clip", "R(2+1)D-10", "ucf101", "–", "33.3"]
    assert (tmp_path / "table.md").read_text() == text == capsys.readouterr().out


def test_collect_results_names_the_broken_file(tmp_path):
    broken = tmp_path / "demo" / "test_retrieval" / "retrieval.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    with pytest.raises(collect_results.ResultsError, match="retrieval.json"):
        collect_results.collect(tmp_path)
    write_json(broken, {"R@1": "high"})
    with pytest.raises(collect_results.ResultsError, match="R@1"):
        collect_results.collect(tmp_path)
    with pytest.raises(collect_results.ResultsError, match="no such folder"):
        collect_results.collect(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(collect_results.ResultsError, match="no results"):
        collect_results.main(collect_results.get_args_parser().parse_args(["--output-root", str(empty)]))


def test_random_init_checkpoint_loads_like_a_pretrained_one(tmp_path):
    from model.backbones import build_backbone
    from model.weights import load_backbone, read_checkpoint

    random_init = load_entry("paper_scripts/random_init.py")
    path = tmp_path / "random.pth"
    random_init.main(random_init.get_args_parser().parse_args(
        ["--net", "r3d", "--base-width", "8", "--num-frames", "8", "--size", "32", "--out", str(path)]))
    ckpt = read_checkpoint(path)
    assert ckpt["config"]["num_frames"] == 8 and ckpt["config"]["size"] == 32
    backbone, _ = build_backbone("r3d", 8)
    assert load_backbone(backbone, path, ckpt, "r3d", 8) == len(backbone.state_dict())
    torch.manual_seed(0)
    fresh, _ = build_backbone("r3d", 8)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), backbone.state_dict().values()))


def test_collect_results_heads_columns_by_the_test_data_and_explains_only_shown_brackets(tmp_path):
    root = tmp_path / "out"
    write_json(root / "demo" / "test" / "test_results.json", {"top1": 30.0})
    args = collect_results.get_args_parser().parse_args(["--output-root", str(root)])
    text = collect_results.main(args)
    assert "| demo top-1 |" in text.splitlines()[0] and "UCF101" not in text
    assert "In brackets" not in text and "| 30.0 |" in text
    write_json(root / "simclr_clip-sr-tc_r21d_k400" / "test" / "test_results.json", {"top1": 80.0})
    text = collect_results.main(args)
    assert "| top-1 (tested on) |" in text.splitlines()[0] and "In brackets" in text
    assert "| 30.0 (demo) |" in text and "| 80.0 (82.0) (UCF101) |" in text
