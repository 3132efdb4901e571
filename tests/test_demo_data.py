import zlib

import cv2
import numpy as np
import pytest

from dataset.sampling import dualvar_clip_pair
from process_data.src import make_demo_data
from process_data.src.make_demo_data import CLASSES, generate, main, render_video

SIZE = (32, 48)
FRAMES = 16


def decode(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    capture.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--out", str(out), "--classes", "MoveRight", "MoveLeft", "Bounce",
                 "--videos-per-class", "4", "--size", *map(str, SIZE), "--frames", str(FRAMES),
                 "--workers", "1"]) == 0
    return out


def test_ucf101_layout_and_crlf_split_files(demo):
    videos = sorted(p.relative_to(demo / "videos").as_posix() for p in (demo / "videos").rglob("*.avi"))
    assert len(videos) == 12
    assert "MoveLeft/v_MoveLeft_g01_c01.avi" in videos
    raw = (demo / "splits" / "trainlist01.txt").read_bytes()
    assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == raw.count(b"\n")
    assert (demo / "splits" / "classInd.txt").read_bytes() == b"1 MoveRight\r\n2 MoveLeft\r\n3 Bounce\r\n"
    train = (demo / "splits" / "trainlist01.txt").read_text().splitlines()
    test = (demo / "splits" / "testlist01.txt").read_text().splitlines()
    assert len(train) + len(test) == 12
    # Group-wise split: 4 groups of one video, the first 28 % of them (group 1) test only, the rest train only,
    # labels 1-based per classInd.
    assert len(test) == 3 and all("_g01_" in v for v in test)
    assert not any("_g01_" in v for v in train)
    assert "MoveLeft/v_MoveLeft_g03_c01.avi 2" in train
    assert sorted([v.split()[0] for v in train] + test) == videos


def test_videos_decode_to_requested_size_and_length(demo):
    frames = decode(demo / "videos" / "MoveRight" / "v_MoveRight_g01_c01.avi")
    assert frames.shape == (FRAMES, *SIZE, 3)
    assert frames.std() > 10  # not a blank video


def test_same_seed_same_frames_other_seed_differs(demo, tmp_path):
    video = "MoveLeft/v_MoveLeft_g03_c01.avi"
    generate(tmp_path / "a", ["MoveRight", "MoveLeft"], 4, 0, SIZE, FRAMES, workers=2)
    generate(tmp_path / "b", ["MoveLeft"], 4, 1, SIZE, FRAMES)
    # Same seed, other worker count and other class list: identical decoded frames.
    np.testing.assert_array_equal(decode(demo / "videos" / video), decode(tmp_path / "a" / "videos" / video))
    assert not np.array_equal(decode(demo / "videos" / video), decode(tmp_path / "b" / "videos" / video))


@pytest.mark.parametrize("forward,backward", [("MoveRight", "MoveLeft"), ("Grow", "Shrink"),
                                              ("RotateClockwise", "RotateAnticlockwise")])
def test_pair_is_exact_time_reversal_with_one_appearance_distribution(forward, backward):
    def render(name):
        return render_video(name, np.random.default_rng(3), FRAMES, *SIZE)
    np.testing.assert_array_equal(render(backward), render(forward)[::-1])
    spec, other = CLASSES[forward], CLASSES[backward]
    assert (spec.motion, spec.scene, spec.shape) == (other.motion, other.scene, other.shape) and other.reverse


def test_arrow_of_time_pairs_are_written_beside_the_splits(demo):
    assert (demo / "splits" / make_demo_data.PAIRS_FILE).read_text().split() == ["MoveRight", "MoveLeft"]
    assert make_demo_data.arrow_of_time_pairs(list(CLASSES)) == [
        ("MoveRight", "MoveLeft"), ("Grow", "Shrink"), ("RotateClockwise", "RotateAnticlockwise")]
    assert make_demo_data.arrow_of_time_pairs(["Grow", "MoveLeft", "Bounce"]) == []  # a half pair is none


def test_trajectories_follow_the_class_motion_and_stay_in_the_frame():
    rng = np.random.default_rng(0)
    radius, frames = 5.0, 128
    cx, cy, scale, angle = make_demo_data._trajectory("move", frames, *SIZE, radius, rng)
    assert np.all(np.diff(cx) >= 0) and cx[-1] > cx[0]
    cx, cy, scale, angle = make_demo_data._trajectory("scale", frames, *SIZE, radius, rng)
    assert np.all(np.diff(scale) > 0)
    cx, cy, scale, angle = make_demo_data._trajectory("rotate", frames, *SIZE, radius, rng)
    assert np.all(np.diff(angle) < 0)  # clockwise on screen
    for motion in ("move", "scale", "rotate", "bounce", "orbit", "swing", "jump"):
        for seed in range(5):
            cx, cy, _, _ = make_demo_data._trajectory(motion, frames, *SIZE, radius, np.random.default_rng(seed))
            assert cx.min() >= radius and cx.max() <= SIZE[1] - radius, motion
            assert cy.min() >= radius and cy.max() <= SIZE[0] - radius, motion
            assert np.ptp(cx) + np.ptp(cy) > 0 or motion == "rotate", f"{motion} does not move"


def test_motion_parameters_are_continuous_per_video():
    speeds = [np.abs(np.diff(make_demo_data._trajectory("bounce", 16, 64, 64, 5.0, np.random.default_rng(s))[0][:2]))[0]
              for s in range(50)]
    assert len(np.unique(np.round(speeds, 6))) == 50


def test_appearance_is_a_class_correlated_distribution_that_overlaps():
    draws = 4000
    for name, spec in CLASSES.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        scenes, shapes = zip(*(make_demo_data.draw_appearance(name, rng) for _ in range(draws)))
        # the preferred value: 0.5 + 0.5 / 5 = 0.6; 4000 draws put 5 standard errors at 0.04
        assert abs(scenes.count(spec.scene) / draws - 0.6) < 0.04, name
        assert abs(shapes.count(spec.shape) / draws - 0.6) < 0.04, name
        assert set(scenes) == set(make_demo_data.SCENES) and set(shapes) == set(make_demo_data.SHAPES), name
    preferred = {(spec.scene, spec.shape) for spec in CLASSES.values()}
    assert len({spec.scene for spec in CLASSES.values()}) < len(CLASSES)  # classes share scenes
    assert len(preferred) > 1


def test_nuisances_vary_between_videos_of_a_class():
    videos = [render_video("Bounce", make_demo_data._rng(0, "Bounce", 3, clip), 4, 16, 16) for clip in range(1, 9)]
    means = np.array([v.reshape(-1, 3).mean(axis=0) for v in videos])  # (videos, BGR)
    assert means.std(axis=0).min() > 8  # lighting, colour cast and scene colours differ per video
    shaken = render_video("Grow", np.random.default_rng(1), 8, 24, 24)
    assert shaken.std() > 10


def test_default_splits_follow_ucf101_groups():
    names = make_demo_data.video_names("Bounce", 150)
    test = [stem for group, _, stem in names if group <= make_demo_data.num_test_groups(150)]
    assert len(names) == 150 and names[-1][:2] == (25, 6)
    assert len(test) == 42 and all(int(stem.split("_g")[1][:2]) <= 7 for stem in test)
    assert len(test) * len(CLASSES) >= 400  # one test video is at most 0.25 points
    assert main(["--out", "unused", "--dry-run"]) == 0


def clip_overlap(num_frames: int, clip_len: int, stride: int, trials: int = 20000, seed: int = 0) -> dict[str, float]:
    """How often DualVar's two clips (METHOD.md section 2) meet: ``shared_frame`` = they hold a frame in
    common, ``span`` = their time spans (first to last frame) intersect."""
    rng = np.random.default_rng(seed)
    shared = spans = 0
    for _ in range(trials):
        a, b = dualvar_clip_pair(num_frames, rng, clip_len, stride)
        shared += bool(np.intersect1d(a, b).size)
        spans += int(max(a.min(), b.min()) <= min(a.max(), b.max()))
    return {"shared_frame": shared / trials, "span": spans / trials}


def test_default_videos_make_the_two_clips_usually_disjoint():
    overlap = clip_overlap(128, 8, 4, trials=4000)
    assert overlap["span"] < 0.45 and overlap["shared_frame"] < 0.2
    assert clip_overlap(32, 8, 4, trials=2000)["shared_frame"] > 0.5  # the first demo's videos
    # the miniature's calibrated recipe (docs/miniature.md): 9 frames at stride 8 meet far more often
    recipe = clip_overlap(128, 9, 8, trials=4000)
    assert 0.17 < recipe["shared_frame"] < 0.25 and 0.7 < recipe["span"] < 0.8


def test_mp4_output_decodes(tmp_path):
    av = pytest.importorskip("av")
    generate(tmp_path, ["Grow"], 3, 0, SIZE, 8, fmt="mp4")
    with av.open(str(tmp_path / "videos" / "Grow" / "v_Grow_g01_c01.mp4")) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (*SIZE, 3)


@pytest.mark.parametrize("flags,message", [
    (["--classes", "Skateboard"], "unknown class"),
    (["--videos-per-class", "2"], "--videos-per-class"),
    (["--format", "mp4", "--size", "33", "48"], "even --size"),
])
def test_bad_flags_name_the_flag(tmp_path, capsys, flags, message):
    assert main(["--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "videos").exists()


def test_dry_run_prints_configuration(tmp_path, capsys):
    import json
    assert main(["--out", str(tmp_path / "x"), "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["videos_per_class"], config["frames"], config["size"]) == (150, 128, [48, 64])
    assert config["classes"] == list(CLASSES)
    assert not (tmp_path / "x").exists()
