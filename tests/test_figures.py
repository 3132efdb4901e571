"""paper_scripts/make_figures.py on fake retrieve.py outputs: the three PNGs, skipped and missing runs,
the retrieval grid's neighbours (those of evaluation.metrics), bad inputs and --dry-run."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dataset.layout import frame_name, write_class_index
from evaluation.metrics import recall_at_k
from paper_scripts import make_figures
from paper_scripts.make_figures import FigureError

CLASSES = ["MoveRight", "MoveLeft", "Grow", "Shrink"]
# run folder (paper_scripts/common.sh's run_miniature demo layout) -> seed of its fake features
RUNS = {"demo/random/seed0": 1, "demo/simclr/seed0": 2, "demo/dualvar/seed0": 3}
SCRIPT = make_figures.REPO / "paper_scripts" / "make_figures.py"


def fake_split(rng, per_class: int, split: str, dim: int = 16):
    """Features clustered by class (noise on a class centre), labels and frame-folder ids."""
    centres = np.random.default_rng(0).normal(size=(len(CLASSES), dim))
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    features = centres[labels] + 0.6 * rng.normal(size=(len(labels), dim))
    ids = np.array([f"{CLASSES[c]}/v_{CLASSES[c]}_{split}{i:02d}" for i, c in enumerate(labels)])
    return features.astype(np.float32), labels, ids


@pytest.fixture
def fake_demo(tmp_path):
    """DATA_ROOT/demo (class list, 4-frame 24x32 JPEG folders) and OUTPUT_ROOT with three retrieval runs."""
    data_root, output_root = tmp_path / "data", tmp_path / "output"
    write_class_index(data_root / "demo" / "csv" / "ClassInd.txt", CLASSES)
    for run, seed in RUNS.items():
        rng = np.random.default_rng(seed)
        folder = output_root / run / "test_retrieval"
        folder.mkdir(parents=True)
        for split, per_class in (("train", 4), ("test", 3)):
            features, labels, ids = fake_split(rng, per_class, split)
            np.savez(folder / f"features_{split}.npz", features=features, labels=labels, video_ids=ids)
            for video, label in zip(ids, labels):
                frames = data_root / "demo" / "frames" / video
                frames.mkdir(parents=True, exist_ok=True)
                for t in range(4):
                    image = np.full((24, 32, 3), 40 * label, np.uint8)
                    image[8:16, 4 + 6 * t:10 + 6 * t] = 255  # a square moving right
                    cv2.imwrite(str(frames / frame_name(t)), image)
        (folder / "retrieval.json").write_text(json.dumps({"R@1": 10.0 * seed, "R@5": 50.0}))
    return data_root, output_root, tmp_path / "figures"


def flags(data_root, output_root, out_dir, *extra):
    return ["--data-root", str(data_root), "--output-root", str(output_root), "--out-dir", str(out_dir), *extra]


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_writes_the_three_figures_at_readme_width_deterministically(fake_demo, capsys):
    data_root, output_root, out_dir = fake_demo
    plan = make_figures.main(flags(data_root, output_root, out_dir))
    assert [run["name"] for run in plan["runs"]] == ["random init", "SimCLR clip baseline", "DualVar"]
    assert plan["retrieval_run"] == "DualVar" and plan["embedding"] == ["t-SNE"] * 3
    for name in make_figures.FIGURES.values():
        assert png_size(out_dir / name)[0] == 1400, name
    assert "skipped" not in capsys.readouterr().out
    first = {name: (out_dir / name).read_bytes() for name in make_figures.FIGURES.values()}
    make_figures.main(flags(data_root, output_root, out_dir, "--middle-frame-only", "--figures", "distribution",
                            "retrieval"))
    again = {name: (out_dir / name).read_bytes() for name in make_figures.FIGURES.values()}
    assert again["demo_feature_distribution.png"] == first["demo_feature_distribution.png"]  # t-SNE is seeded
    assert again["demo_retrieval.png"] != first["demo_retrieval.png"]  # one frame per tile instead of three


def test_missing_runs_are_skipped_with_a_note(fake_demo, capsys):
    data_root, output_root, out_dir = fake_demo
    (output_root / "demo/simclr/seed0" / "test_retrieval" / "retrieval.json").unlink()  # a run not made
    plan = make_figures.main(flags(data_root, output_root, out_dir, "--figures", "distribution"))
    assert [run["name"] for run in plan["runs"]] == ["random init", "DualVar"]
    note = capsys.readouterr().out
    # the note says the figure omits a run that was not made, and the command that makes it
    assert "omit run 'SimCLR clip baseline', which was not made" in note
    assert str(output_root / "demo/simclr/seed0") in note and "bash paper_scripts/run/demo_baseline.sh" in note
    assert "demo.sh" not in note.replace("demo_baseline.sh", "")
    # a run of --runs outside the demo layout is made by retrieve.py into its folder
    make_figures.main(flags(data_root, output_root, out_dir, "--dry-run", "--runs",
                            "A=demo/dualvar/seed0/test_retrieval", "B=elsewhere/test_retrieval"))
    assert f"--output-dir {output_root / 'elsewhere/test_retrieval'}" in capsys.readouterr().out
    assert (out_dir / "demo_feature_distribution.png").is_file()
    assert not (out_dir / "demo_retrieval.png").exists()
    # without DualVar, the retrieval grid falls back to the last run found; a named missing run is an error
    (output_root / "demo/dualvar/seed0" / "test_retrieval" / "retrieval.json").unlink()
    assert make_figures.main(flags(data_root, output_root, out_dir, "--dry-run"))["retrieval_run"] == "random init"
    with pytest.raises(FigureError, match="--retrieval-run 'DualVar'"):
        make_figures.main(flags(data_root, output_root, out_dir, "--retrieval-run", "DualVar"))


def test_prefix_names_the_files_of_another_demo(fake_demo):
    data_root, output_root, out_dir = fake_demo
    make_figures.main(flags(data_root, output_root, out_dir, "--prefix", "iic_", "--figures", "retrieval",
                            "--runs", "IIC=demo/dualvar/seed0/test_retrieval"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["iic_demo_retrieval.png"]


def test_no_run_at_all_names_the_expected_folders(tmp_path):
    output_root = tmp_path / "empty"
    with pytest.raises(FigureError, match="no retrieval run found") as error:
        make_figures.main(flags(tmp_path, output_root, tmp_path / "figures"))
    for run in RUNS:
        assert str(output_root / run / "test_retrieval") in str(error.value)
    # the method diagram needs no run
    make_figures.main(flags(tmp_path, output_root, tmp_path / "figures", "--figures", "overview"))
    assert png_size(tmp_path / "figures" / "method_overview.png")[0] == 1400


def test_retrieval_grid_shows_the_neighbours_retrieve_py_ranks(fake_demo):
    _, output_root, _ = fake_demo
    folder = output_root / "demo/dualvar/seed0" / "test_retrieval"
    test = make_figures.read_features(folder / "features_test.npz")
    train = make_figures.read_features(folder / "features_train.npz")
    rows, neighbours = make_figures.select_examples(test, train, count=3, k=5)
    # one query per class: the first test video of each of the three lowest classes
    assert rows.tolist() == [0, 3, 6] and test["labels"][rows].tolist() == [0, 1, 2]
    _, retrieved = recall_at_k(test["features"], test["labels"], train["features"], train["labels"], ks=(5,))
    np.testing.assert_array_equal(neighbours, retrieved[rows])
    # and by hand: cosine similarity of the centred, normalised features, most similar first
    def unit(x):
        x = x - x.mean(axis=0)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit(test["features"])[rows] @ unit(train["features"]).T
    np.testing.assert_array_equal(neighbours, np.argsort(-similarity, axis=1)[:, :5])


def test_bad_inputs_name_the_file_and_the_fix(fake_demo):
    data_root, output_root, out_dir = fake_demo
    features = output_root / "demo/dualvar/seed0" / "test_retrieval" / "features_test.npz"
    np.savez(features, features=np.zeros((3, 4)), labels=np.zeros(3, int))
    with pytest.raises(FigureError, match=f"{features}: no video_ids.*re-run retrieve.py"):
        make_figures.main(flags(data_root, output_root, out_dir, "--figures", "retrieval"))
    np.savez(features, features=np.zeros((3, 4)), labels=np.array([0, 1, 9]), video_ids=np.array(["a", "b", "c"]))
    with pytest.raises(FigureError, match="labels span 0..9 but .*ClassInd.txt lists 4 classes"):
        make_figures.main(flags(data_root, output_root, out_dir, "--figures", "retrieval"))
    shutil.rmtree(data_root / "demo" / "frames" / "MoveRight" / "v_MoveRight_test00")
    with pytest.raises(FigureError, match=r"no frames in .*v_MoveRight_test00: pass the --data-root"):
        make_figures.main(flags(data_root, output_root, out_dir, "--figures", "retrieval", "--retrieval-run",
                                "random init"))
    with pytest.raises(FigureError, match="--retrieval-run 'nope' is not a run of --runs"):
        make_figures.main(flags(data_root, output_root, out_dir, "--retrieval-run", "nope"))
    with pytest.raises(SystemExit):
        make_figures.main(flags(data_root, output_root, out_dir, "--runs", "no-equals-sign"))
    with pytest.raises(FigureError, match="every NAME must be different"):
        make_figures.main(flags(data_root, output_root, out_dir, "--runs", "a=demo/dualvar/seed0/test_retrieval",
                                "a=x"))


def test_dry_run_reads_and_writes_nothing_and_the_cli_needs_no_torch(fake_demo, tmp_path):
    data_root, output_root, out_dir = fake_demo
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from paper_scripts import make_figures; "
             "make_figures.main(sys.argv[2:]); print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, str(make_figures.REPO), "--dry-run",
                           *flags(data_root, output_root, out_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan_text, torch_loaded = proc.stdout.rsplit("\n", 2)[:2]
    plan = json.loads(plan_text)
    assert torch_loaded == "False"
    assert plan["writes"]["retrieval"] == str(out_dir / "demo_retrieval.png")
    assert plan["class_index"] == str(data_root / "demo" / "csv" / "ClassInd.txt")
    assert [run["dir"] for run in plan["runs"]] == [str(output_root / run / "test_retrieval") for run in RUNS]
    assert not out_dir.exists()
    # the script itself: a clear one-line error, no traceback
    proc = subprocess.run([sys.executable, str(SCRIPT), *flags(data_root, tmp_path / "nothing", out_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("make_figures.py: error: no retrieval run found")
