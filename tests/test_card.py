"""Reproduction cards in the results tables: built from the runs' files, compared with the published settings."""

import json
from pathlib import Path

import pytest

from engine.card import build_card, summary_line
from paper_scripts import collect_results

EXP = "simclr_clip-sr-tc_r21d_ucf101"


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_published_recipe_run(exp_dir: Path, *, epochs=200, processes=8, commits=("c0ffee", "c0ffee", "c0ffee"),
                               dirty=False, seed=0, test=True, retrieval=False) -> None:
    """The config.json files and results a run of the published DualVar recipe leaves (no card yet)."""
    clip = {"num_frames": 16, "size": 112}
    write_json(exp_dir / "pretrain" / "config.json", {"git": {"commit": commits[0], "dirty": False}, "config": {
        "model": "simclr", "mode": "clip-sr-tc", "net": "r21d", "dataset": "ucf101", "split": 1, "epochs": epochs,
        "batch_size": 64 // processes, "stride": 4, "seed": seed, "moco_k": 16384, "amp": "bf16", **clip,
        "resolved": {"world_size": processes, "global_batch_size": 64, "train_videos": 9537}}})
    write_json(exp_dir / "finetune" / "config.json", {"git": {"commit": commits[1], "dirty": dirty}, "config": {
        "pretrain": str(exp_dir / "pretrain" / "epoch189.pth"), "train_what": "ft", "dataset": "ucf101", "split": 1,
        "epochs": 100, "batch_size": 2, "stride": 2, "seed": seed, "sync_bn": True, "amp": "fp16", **clip,
        "resolved": {"world_size": 8, "global_batch_size": 16, "pretrain_epoch": 190, "train_videos": 8737,
                     "val_videos": 800}}})
    config = {"dataset": "ucf101", "split": 1, "stride": 2, "amp": "none", **clip}
    if test:
        write_json(exp_dir / "test" / "test_results.json", {
            "top1": 79.5, "top5": 95.0, "num_videos": 3783, "split": "test", "aggregate": "softmax",
            "checkpoint": str(exp_dir / "finetune" / "checkpoint.pth"), "checkpoint_epoch": 100,
            "git": {"commit": commits[2], "dirty": False}, "config": config})
    if retrieval:
        write_json(exp_dir / "test_retrieval" / "retrieval.json", {
            "R@1": 40.0, "R@5": 60.0, "R@10": 70.0, "R@20": 80.0, "R@50": 90.0, "knn_top1": 50.0 + seed,
            "linear_probe_top1": 55.0, "num_queries": 3783, "num_gallery": 9537, "layer": "pool",
            "checkpoint": str(exp_dir / "pretrain" / "epoch189.pth"), "checkpoint_epoch": 190,
            "git": {"commit": commits[2], "dirty": False}, "config": {**config, "stride": 4}})


def test_card_of_a_test_result_follows_the_checkpoints_to_every_stage(tmp_path):
    write_published_recipe_run(tmp_path)
    card = build_card(tmp_path / "test" / "test_results.json")
    pre, ft = card["pretraining"], card["finetuning"]
    assert (pre["epochs"], pre["processes"], pre["per_process_batch"], pre["global_batch"]) == (200, 8, 8, 64)
    assert pre["negatives"] == "the global batch, gathered across 8 processes"
    assert (pre["checkpoint_epoch"], ft["checkpoint_epoch"], ft["epochs"]) == (190, 100, 100)
    assert ft["batch_norm"] == "synchronised across processes" and ft["videos"]["validation_hold_out"] == 800
    assert card["data"] == {"dataset": "ucf101", "split": 1, "videos": {"test_listed": None, "test_used": 3783}}
    assert card["revision"] == {"commit": "c0ffee", "clean": True}
    line = summary_line(card)
    assert "8 × 8 = 64 per step" in line and "split 1" in line and "3783 test videos" in line


def test_card_records_the_precision_every_stage_ran_in(tmp_path):
    write_published_recipe_run(tmp_path)
    card = build_card(tmp_path / "test" / "test_results.json")
    assert (card["pretraining"]["precision"], card["finetuning"]["precision"], card["evaluation"]["precision"]) == (
        "bf16 autocast", "fp16 autocast", "fp32")
    line = summary_line(card)
    assert line.index("in bf16 autocast") < line.index("in fp16 autocast") < line.index("in fp32")
    # a configuration without --amp (written by other code) and a card written before precisions were recorded
    config_path = tmp_path / "finetune" / "config.json"
    config = json.loads(config_path.read_text())
    del config["config"]["amp"]
    write_json(config_path, config)
    card = build_card(tmp_path / "test" / "test_results.json")
    assert card["finetuning"]["precision"] == "not recorded"
    del card["evaluation"]["precision"]
    line = summary_line(card)
    assert line.count("precision not recorded") == 2 and "in bf16 autocast" in line


@pytest.mark.parametrize("commits, dirty, expected", [
    (("a", "a", "a"), True, {"commit": "a", "clean": False}),
    (("a", "b", "a"), False, {"commit": ["a", "b"], "clean": False}),
    (("a", None, "a"), False, {"commit": ["a", "unknown"], "clean": False}),
])
def test_card_revision_is_clean_only_when_every_stage_ran_one_clean_commit(tmp_path, commits, dirty, expected):
    write_published_recipe_run(tmp_path, commits=commits, dirty=dirty)
    assert build_card(tmp_path / "test" / "test_results.json")["revision"] == expected


def test_results_table_links_each_row_to_its_card_and_names_differences_from_the_paper(tmp_path):
    root = tmp_path / "output"
    write_published_recipe_run(root / EXP)
    write_published_recipe_run(root / "moco_clip-sr-tc_r21d_ucf101", epochs=100, processes=4)
    out = tmp_path / "results.md"
    text = collect_results.main(collect_results.get_args_parser().parse_args(
        ["--output-root", str(root), "--out", str(out)]))
    assert (root / EXP / "test" / "card.json").is_file()  # written from the runs' files for an older run
    row = next(line for line in text.splitlines() if line.startswith(f"| {EXP} "))
    assert row.endswith(f"[test](output/{EXP}/test/card.json) |")
    settings = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "Published (METHOD.md): split 1, pretraining epochs 200" in settings[EXP]
    assert "Differs" not in settings[EXP]  # the published recipe, as METHOD.md states it
    differs = settings["moco_clip-sr-tc_r21d_ucf101"].split("**Differs**: ")[1]
    assert differs == ("pretraining epochs: 100 here, 200 published; "
                       "pretraining processes: 4 here, 8 published.")


def test_seed_summary_carries_one_card_and_names_settings_that_vary_between_seeds(tmp_path):
    for seed in (0, 1, 2):
        write_published_recipe_run(tmp_path / "same" / f"seed{seed}", seed=seed, test=False, retrieval=True)
        write_published_recipe_run(tmp_path / "mixed" / f"seed{seed}", seed=seed, test=False, retrieval=True,
                                   epochs=200 if seed < 2 else 150)
    summary = collect_results.summarize_seeds(tmp_path)
    same, mixed = summary["same"]["card"], summary["mixed"]["card"]
    assert same["seeds"] == [0, 1, 2] and same["varies_between_seeds"] == []
    assert mixed["varies_between_seeds"] == ["pretraining epochs"]
    assert summary["same"]["metrics"]["knn_top1"]["mean"] == pytest.approx(51.0)
    table = collect_results.seeds_table(summary)
    assert "**Varies between seeds**: pretraining epochs." in table
    assert "- **same**: ucf101 split 1; pretrained simclr clip-sr-tc r21d" in table and "seeds 0, 1, 2" in table


def test_card_of_a_classifier_finetuned_from_a_foreign_release_names_the_release(tmp_path):
    write_published_recipe_run(tmp_path)
    finetune_config = json.loads((tmp_path / "finetune" / "config.json").read_text())
    finetune_config["config"].update(pretrain=None, init_from="/releases/iic_r3d.pth")
    finetune_config["config"]["resolved"]["pretrain_kind"] = "VCOP-family checkpoint"
    write_json(tmp_path / "finetune" / "config.json", finetune_config)
    card = build_card(tmp_path / "test" / "test_results.json")
    assert card["pretraining"] is None and card["pretrained_from"] == "/releases/iic_r3d.pth"
    assert "weights from /releases/iic_r3d.pth (VCOP-family checkpoint)" in summary_line(card)


def test_card_states_a_budget_in_steps_and_a_frame_difference_input(tmp_path):
    write_published_recipe_run(tmp_path, retrieval=True)
    for stage in ("pretrain", "finetune"):
        path = tmp_path / stage / "config.json"
        data = json.loads(path.read_text())
        data["config"].update(clip_input="diff")
        data["config"]["resolved"].update(epochs=17, steps=1072)  # --steps 1072: 17 epochs, the last cut short
        write_json(path, data)
    for name in ("test/test_results.json", "test_retrieval/retrieval.json"):
        results = json.loads((tmp_path / name).read_text())
        results["config"]["clip_input"] = "diff"
        write_json(tmp_path / name, results)
    card = build_card(tmp_path / "test" / "test_results.json")
    assert (card["pretraining"]["epochs"], card["pretraining"]["steps"]) == (17, 1072)
    assert card["pretraining"]["clip"]["input"] == card["clip"]["input"] == "diff"
    line = summary_line(card)
    assert "17 epochs (1072 steps)" in line and "stride 4, diff input" in line
    published = collect_results.published_settings("simclr", "ucf101")
    assert "pretraining clip: 16×112², stride 4, diff input here, 16×112², stride 4 published" in \
        collect_results.differences(card, published)


def test_a_card_says_how_the_method_drew_its_clips_and_its_negatives(tmp_path):
    """Each method states its card fields: IIC samples consecutive frames whatever --stride says, from memory banks;
    a run of no known method (the random-weights reference) has no negatives to name."""
    write_published_recipe_run(tmp_path)
    config_path = tmp_path / "pretrain" / "config.json"
    info = json.loads(config_path.read_text())
    info["config"].update(model="iic", intra_neg="repeat", modality="res", bank_k=1024)
    write_json(config_path, info)
    pre = build_card(tmp_path / "test" / "test_results.json")["pretraining"]
    assert (pre["mode"], pre["clip"]["stride"]) == ("intra-negative repeat, view 2 res", 1)
    assert pre["negatives"] == "memory banks, 1024 rows drawn per sample"
    info["config"].update(model="random init", mode=None)
    write_json(config_path, info)
    assert build_card(tmp_path / "test" / "test_results.json")["pretraining"]["negatives"] == "unknown"
