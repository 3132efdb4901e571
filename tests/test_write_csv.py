import json
from pathlib import Path

import pytest

from dataset.layout import read_class_index, read_split_csv
from process_data.src.write_csv import FrameIndex, main, parse_folder, parse_hmdb51, parse_kinetics, parse_ucf101

# the official split files live in the shared folder beside the repository: <repo>/../shared/data/splits
OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "splits"

# Real HMDB51 names carry glob metacharacters and quotes.
HMDB_ODD = "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_fr_goo_0"
HMDB_ODD2 = "Tom_&_Jerry_(1)_'cartoon'_brush_hair_f_nm_np1_ri_med_1"


def write_crlf(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())


def make_frames(root, frame_dirs, frames=1):
    for frame_dir in frame_dirs:
        folder = root / frame_dir
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            (folder / f"image_{i + 1:05d}.jpg").write_bytes(b"")


@pytest.fixture
def ucf(tmp_path):
    """UCF101-format split files (CRLF) and frame folders, with the HandstandPushups trap."""
    splits = tmp_path / "splits"
    write_crlf(splits / "classInd.txt", ["1 ApplyEyeMakeup", "2 HandstandPushups"])
    write_crlf(splits / "trainlist01.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
                                            "HandstandPushups/v_HandStandPushups_g08_c01.avi 2"])
    write_crlf(splits / "testlist01.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                                           "HandstandPushups/v_HandStandPushups_g01_c01.avi"])
    frames = tmp_path / "frames"
    make_frames(frames, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
                         "HandstandPushups/v_HandstandPushups_g08_c01"], frames=3)
    make_frames(frames, ["HandstandPushups/v_HandStandPushups_g01_c01"], frames=2)
    (frames / "HandstandPushups/v_HandStandPushups_g01_c01/stray").mkdir()
    (frames / "HandstandPushups/v_HandStandPushups_g01_c01/stray/image_00003.jpg").write_bytes(b"")
    return tmp_path


def run(tmp_path, dataset, *extra):
    return main(["--dataset", dataset, "--frame-root", str(tmp_path / "frames"), "--split-dir",
                 str(tmp_path / "splits"), "--out-dir", str(tmp_path / "csv"), *extra])


def rows(path):
    return [(r.frame_dir, r.num_frames, r.label) for r in read_split_csv(path)]


@pytest.mark.skipif(not (OFFICIAL / "ucf101").is_dir(), reason="official UCF101 split files not available")
def test_parse_official_ucf101_lists():
    lists = parse_ucf101(OFFICIAL / "ucf101", 1)
    assert (len(lists.train), len(lists.test), len(lists.class_names)) == (9537, 3783, 101)
    assert lists.class_names[0] == "ApplyEyeMakeup" and lists.train[0] == ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", 0)
    handstand = lists.class_names.index("HandstandPushups")
    assert ("HandstandPushups/v_HandStandPushups_g01_c01", handstand) in lists.test
    assert len({v for v, _ in lists.train} & {v for v, _ in lists.test}) == 0


@pytest.mark.skipif(not (OFFICIAL / "hmdb51").is_dir(), reason="official HMDB51 split files not available")
def test_parse_official_hmdb51_lists():
    lists = parse_hmdb51(OFFICIAL / "hmdb51", 1)
    assert (len(lists.train), len(lists.test), len(lists.class_names)) == (3570, 1530, 51)
    assert lists.class_names == sorted(lists.class_names) and lists.class_names[0] == "brush_hair"
    assert all(n == 70 for n in [sum(1 for _, label in lists.train if label == c) for c in range(51)])
    assert (f"brush_hair/{HMDB_ODD}", 0) in lists.test


def test_ucf101_cli_matches_case_insensitively_and_ignores_stray_folders(ucf, capsys):
    assert run(ucf, "ucf101") == 0
    assert read_class_index(ucf / "csv" / "ClassInd.txt") == ["ApplyEyeMakeup", "HandstandPushups"]
    assert rows(ucf / "csv" / "train_split01.csv") == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", 3, 0),
        ("HandstandPushups/v_HandstandPushups_g08_c01", 3, 1)]  # spelling as on disk
    assert rows(ucf / "csv" / "test_split01.csv") == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", 3, 0),
        ("HandstandPushups/v_HandStandPushups_g01_c01", 2, 1)]  # stray/image_00003.jpg not counted
    out = capsys.readouterr().out
    assert "train: listed 2, found 2, missing 0, empty 0" in out


def test_ucf101_split_number_selects_files(ucf):
    write_crlf(ucf / "splits" / "trainlist02.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1"])
    write_crlf(ucf / "splits" / "testlist02.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"])
    assert run(ucf, "ucf101", "--split", "2") == 0
    assert rows(ucf / "csv" / "train_split02.csv") == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", 3, 0)]


def test_missing_and_empty_videos_fail_unless_allowed(ucf, capsys):
    write_crlf(ucf / "splits" / "testlist01.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                                                   "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi",
                                                   "HandstandPushups/v_HandStandPushups_g01_c01.avi"])
    (ucf / "frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01/image_00001.jpg").unlink()
    for name in ("image_00002.jpg", "image_00003.jpg"):
        (ucf / "frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01" / name).unlink()
    assert run(ucf, "ucf101") == 1
    captured = capsys.readouterr()
    assert "test: listed 3, found 1, missing 1, empty 1" in captured.out
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01" in captured.out  # missing, by name
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01" in captured.out  # empty, by name
    assert "--allow-missing" in captured.err and not (ucf / "csv").exists()
    assert run(ucf, "ucf101", "--allow-missing") == 0
    assert "2 rows left out" in capsys.readouterr().out
    assert rows(ucf / "csv" / "test_split01.csv") == [("HandstandPushups/v_HandStandPushups_g01_c01", 2, 1)]


@pytest.mark.parametrize("name,lines,message", [
    ("trainlist01.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2"], "does not match"),
    ("testlist01.txt", ["Juggling/v_Juggling_g01_c01.avi"], "testlist01.txt:1"),
    ("classInd.txt", ["1 ApplyEyeMakeup", "3 HandstandPushups"], "classInd.txt:2"),
])
def test_malformed_ucf101_files_name_the_line(ucf, capsys, name, lines, message):
    write_crlf(ucf / "splits" / name, lines)
    assert run(ucf, "ucf101") == 2
    assert message in capsys.readouterr().err


def test_missing_split_file_and_bad_split_number(ucf, capsys):
    (ucf / "splits" / "testlist01.txt").unlink()
    assert run(ucf, "ucf101") == 2
    assert "testlist01.txt does not exist" in capsys.readouterr().err
    assert run(ucf, "ucf101", "--split", "4") == 2
    assert "--split must be 1, 2 or 3" in capsys.readouterr().err


def test_hmdb51_cli_with_odd_names(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text(
        f"{HMDB_ODD}.avi 2 \n{HMDB_ODD2}.avi 1 \nApril_09_brush_hair_u_nm_np1_ba_goo_0.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text(f"{HMDB_ODD}.avi 1 \n")
    (splits / "catch_test_split1.txt").write_text("Ball_catch_f_cm_np1_fr_goo_0.avi 1 \n")
    make_frames(tmp_path / "frames", [f"brush_hair/{HMDB_ODD}", f"brush_hair/{HMDB_ODD2}",
                                      "catch/Ball_catch_f_cm_np1_fr_goo_0"], frames=4)
    lists = parse_hmdb51(splits, 1)
    assert lists.class_names == ["brush_hair", "catch"]
    assert lists.train == [(f"brush_hair/{HMDB_ODD2}", 0), ("catch/Ball_catch_f_cm_np1_fr_goo_0", 1)]
    assert lists.test == [(f"brush_hair/{HMDB_ODD}", 0)]  # tag 0 (unused) left out
    assert run(tmp_path, "hmdb51") == 0
    assert rows(tmp_path / "csv" / "test_split01.csv") == [(f"brush_hair/{HMDB_ODD}", 4, 0)]


def test_hmdb51_bad_tag(tmp_path, capsys):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "catch_test_split1.txt").write_text("a.avi 7\n")
    make_frames(tmp_path / "frames", ["catch/a"])
    assert run(tmp_path, "hmdb51") == 2
    assert "catch_test_split1.txt:1" in capsys.readouterr().err


def test_kinetics_cli_spaces_underscores_and_plain_ids(tmp_path):
    header = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.csv").write_text(
        header + "air drumming,abc-_1,10,20,train\nabseiling,xyz,0,10,train\n"
        "\"passing American football (in game)\",q1,5,15,train\n")
    (tmp_path / "splits" / "validate.csv").write_text(header + "air drumming,val_1,3,13,val\n")
    make_frames(tmp_path / "frames", ["air_drumming/abc-_1_000010_000020", "abseiling/xyz",
                                      "passing American football (in game)/q1_000005_000015",
                                      "air_drumming/val_1_000003_000013"], frames=2)
    assert run(tmp_path, "k400") == 0
    assert read_class_index(tmp_path / "csv" / "ClassInd.txt") == [
        "abseiling", "air drumming", "passing American football (in game)"]
    assert rows(tmp_path / "csv" / "train_split01.csv") == [
        ("air_drumming/abc-_1_000010_000020", 2, 1), ("abseiling/xyz", 2, 0),
        ("passing American football (in game)/q1_000005_000015", 2, 2)]
    assert rows(tmp_path / "csv" / "test_split01.csv") == [("air_drumming/val_1_000003_000013", 2, 1)]


def test_kinetics_parser_rejects_unknown_test_class_and_bad_header(tmp_path):
    from process_data.src.write_csv import SplitFileError
    header = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "train.csv").write_text(header + "a,x,0,10,train\n")
    (tmp_path / "val.csv").write_text(header + "b,y,0,10,val\n")
    with pytest.raises(SplitFileError, match="classes not in"):
        parse_kinetics(tmp_path / "train.csv", tmp_path / "val.csv")
    (tmp_path / "val.csv").write_text("youtube_id,label\ny,a\n")
    with pytest.raises(SplitFileError, match="expected a header"):
        parse_kinetics(tmp_path / "train.csv", tmp_path / "val.csv")


def test_folder_seeded_split_is_stratified_and_deterministic(tmp_path):
    frames = tmp_path / "frames"
    make_frames(frames, [f"{c}/vid{i}" for c in ("cats", "dogs") for i in range(10)])
    a = parse_folder(frames, 0.3, seed=1)
    assert a == parse_folder(frames, 0.3, seed=1)
    assert a.test != parse_folder(frames, 0.3, seed=2).test
    assert a.class_names == ["cats", "dogs"]
    assert [sum(1 for _, label in a.test if label == c) for c in (0, 1)] == [3, 3]
    assert sorted(a.train + a.test) == sorted((f"{c}/vid{i}", k) for k, c in enumerate(("cats", "dogs"))
                                              for i in range(10))
    assert main(["--dataset", "folder", "--frame-root", str(frames), "--out-dir", str(tmp_path / "csv"),
                 "--seed", "1"]) == 0
    assert len(read_split_csv(tmp_path / "csv" / "test_split01.csv")) == 6


def test_folder_user_lists(tmp_path):
    frames = tmp_path / "frames"
    make_frames(frames, ["cats/a", "cats/b", "dogs/c"])
    write_crlf(tmp_path / "train.txt", ["cats/a.avi", "dogs/c"])
    write_crlf(tmp_path / "test.txt", ["cats/b"])
    lists = parse_folder(frames, 0.3, 0, tmp_path / "train.txt", tmp_path / "test.txt")
    assert lists.train == [("cats/a", 0), ("dogs/c", 1)] and lists.test == [("cats/b", 0)]


def test_frame_index_prefers_exact_spelling(tmp_path):
    make_frames(tmp_path, ["Cls/v_a", "Cls/v_A"])
    index = FrameIndex(tmp_path)
    assert index.find("Cls/v_A") == "Cls/v_A" and index.find("cls/v_a") == "Cls/v_a"
    assert index.find("Cls/v_b") is None and index.find("Other/v_a") is None


def test_missing_frame_root_and_dry_run(tmp_path, capsys):
    assert main(["--dataset", "ucf101", "--frame-root", str(tmp_path / "nope"), "--split-dir", str(tmp_path),
                 "--out-dir", str(tmp_path / "csv")]) == 2
    assert "run extract_frame.py first" in capsys.readouterr().err
    assert main(["--dataset", "hmdb51", "--frame-root", "F", "--split-dir", "S", "--out-dir", "O",
                 "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "hmdb51"


def test_kinetics_needs_exactly_one_annotation_file_per_split(tmp_path, capsys):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    make_frames(tmp_path / "frames", ["a/x"])
    assert run(tmp_path, "k400") == 2
    assert "--test-list" in capsys.readouterr().err
