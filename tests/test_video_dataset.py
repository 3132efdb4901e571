import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import RECIPES
from dataset import frame_reader, sampling, video_dataset as vd
from dataset.build import build_dataset
from dataset.flags import add_data_args
from dataset.layout import LayoutError, VideoRecord, frame_name, write_class_index, write_split_csv
from dataset.local_dataset import data_root, resolve_dataset
from dataset.splits import holdout_split
from dataset.transforms import ClipTransform

CLASSES = ["MoveLeft", "MoveRight", "Grow"]
NUM_FRAMES = 20


def frame_value(i):
    """Grey level of frame i: far enough apart to survive JPEG rounding."""
    return 10 + 10 * i


def write_video(folder: Path, num_frames=NUM_FRAMES, hw=(40, 52)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        image = np.full((*hw, 3), frame_value(i), np.uint8)
        cv2.imwrite(str(folder / frame_name(i)), image)


@pytest.fixture
def data(tmp_path):
    """<tmp>/toy/{frames,csv}: 3 classes x 2 videos x 20 frames at 40x52; train = video g01, test = g02."""
    root = tmp_path / "toy"
    train, test = [], []
    for label, name in enumerate(CLASSES):
        for group, rows in ((1, train), (2, test)):
            rel = f"{name}/v_{name}_g{group:02d}_c01"
            write_video(root / "frames" / rel)
            rows.append(VideoRecord(rel, NUM_FRAMES, label))
    write_split_csv(root / "csv" / "train_split01.csv", train)
    write_split_csv(root / "csv" / "test_split01.csv", test)
    write_class_index(root / "csv" / "ClassInd.txt", CLASSES)
    return root


def make_args(dataset, **overrides):
    args = add_data_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", str(dataset), "--num-frames", "4", "--size", "32", "--resize", "36", "48"])
    args.seed = 3
    vars(args).update(overrides)
    return args


def grey_levels(clip):
    """(3, T, H, W) in [0, 1] -> the frame number each frame shows."""
    values = clip.mean(dim=(0, 2, 3)) * 255
    return [int(round((v - 10) / 10)) for v in values.tolist()]


def test_every_sampler_shapes(data):
    args = make_args(data / "csv")
    expected = {"dualvar": ("clips", (3, 3, 4, 32, 32)), "two_view": ("clips", (2, 3, 4, 32, 32)),
                "iic": ("clip", (3, 4, 32, 32)), "finetune": ("clip", (3, 4, 32, 32)),
                "eval": ("clips", (10, 3, 4, 32, 32))}
    for sampler, (key, shape) in expected.items():
        ds = build_dataset(args, "test", RECIPES[sampler])
        assert len(ds) == 3 and ds.num_classes == 3 and ds.class_names == CLASSES
        item = ds[1]
        assert item[key].shape == shape and item[key].dtype == torch.float32
        assert item["index"] == 1 and item["label"] == 1
    iic = build_dataset(args, "test", RECIPES["iic"])[0]["clip"]
    assert iic.min() >= 0 and iic.max() <= 1  # not normalised


def test_dualvar_views_use_the_sampled_frames_and_a_prime_reuses_a(data, monkeypatch):
    ds = build_dataset(make_args(data / "csv", stride=2), "test", RECIPES["dualvar"])
    plain = ClipTransform("eval", size=32, resize=(36, 48), normalize=False)  # no colour changes
    ds.full = ds.crop_only = plain
    decoded = []
    real_decoder = frame_reader.DECODERS[frame_reader.DEFAULT_DECODER]
    monkeypatch.setitem(frame_reader.DECODERS, frame_reader.DEFAULT_DECODER,
                        lambda blobs: decoded.append(len(blobs)) or real_decoder(blobs))
    for index in range(3):
        ds.set_epoch(index)
        clips = ds[index]["clips"]
        rng = np.random.default_rng([3, index, index])
        idx_a, idx_b = sampling.dualvar_clip_pair(NUM_FRAMES, rng, 4, 2)
        assert grey_levels(clips[0]) == idx_a.tolist()
        assert grey_levels(clips[1]) == idx_b.tolist()
        assert torch.equal(clips[2], clips[0])  # A' = A's frames
        assert decoded[-1] == len(set(idx_a.tolist()) | set(idx_b.tolist()))  # each file decoded once


def test_items_are_a_pure_function_of_seed_epoch_index(data):
    args = make_args(data / "csv")
    ds = build_dataset(args, "test", RECIPES["dualvar"])
    first = ds[0]["clips"]
    assert torch.equal(first, build_dataset(args, "test", RECIPES["dualvar"])[0]["clips"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["clips"])
    ds.set_epoch(0)
    assert torch.equal(first, ds[0]["clips"])
    other_seed = build_dataset(make_args(data / "csv", seed=4), "test", RECIPES["dualvar"])
    assert not torch.equal(first, other_seed[0]["clips"])


def test_each_recipe_draws_in_the_order_its_views_are_listed(data):
    """An item is the recipe read in order from the item's generator: the clips' frame indices, then for each view
    its crop-only coin (DualVar's A only) and its transform's draws. Written out by hand for every recipe, so that a
    reading of the recipes that draws one number more, or in another order, changes the items."""
    args = make_args(data / "csv", stride=2)
    for name in ("dualvar", "two_view", "iic", "finetune", "eval"):
        ds = build_dataset(args, "test", RECIPES[name])
        for epoch, index in ((0, 0), (1, 2)):
            ds.set_epoch(epoch)
            item = ds[index]
            rng = np.random.default_rng([3, epoch, index])
            record, T = ds.records[index], 4
            load = lambda indices: ds.frames(record, indices)  # noqa: E731
            if name in ("dualvar", "two_view"):
                idx_a, idx_b = sampling.dualvar_clip_pair(NUM_FRAMES, rng, T, 2)
                frames_a, frames_b = load(idx_a), load(idx_b)
                view_a = (ds.crop_only if rng.random() < 0.2 else ds.full)(frames_a, rng)
                expected = [view_a, ds.full(frames_b, rng)] + ([ds.full(frames_a, rng)] if name == "dualvar" else [])
                assert torch.equal(item["clips"], torch.stack(expected)), (name, epoch, index)
            elif name == "iic":
                indices = sampling.iic_clip_indices(NUM_FRAMES, rng, T)
                assert torch.equal(item["clip"], ds.crop(load(indices), rng)), (name, epoch, index)
            elif name == "finetune":
                indices = sampling.finetune_clip_indices(NUM_FRAMES, rng, T, 2)
                assert torch.equal(item["clip"], ds.finetune(load(indices), rng)), (name, epoch, index)
            else:
                indices = sampling.eval_clip_indices(NUM_FRAMES, T, 2, 10)
                expected = torch.stack([ds.eval(load(clip), rng) for clip in indices])
                assert torch.equal(item["clips"], expected), (name, epoch, index)


def test_each_distinct_frame_is_decoded_and_resized_once_and_views_share_them(data, monkeypatch):
    ds = vd.VideoFrameDataset([VideoRecord("MoveLeft/v_MoveLeft_g01_c01", NUM_FRAMES, 0)], data / "frames",
                              RECIPES["dualvar"], num_frames=4, size=16, resize=(20, 26))
    noise = np.random.default_rng(0).integers(0, 256, (10, 40, 52, 3), np.uint8)
    frames = torch.from_numpy(noise).permute(0, 3, 1, 2)  # frame i of a video, as decoded

    loaded, resized_rows = [], []
    resize = ClipTransform.resize_frames
    monkeypatch.setattr(ClipTransform, "resize_frames", lambda self, x: resized_rows.append(len(x)) or resize(self, x))
    indices = np.array([7, 3, 9, 3, 7, 1, 5, 0])  # frames 3 and 7 in both clips, out of order
    resized = ds.resized_frames(lambda i: loaded.append(i) or frames[i], indices)
    assert [list(i) for i in loaded] == [[0, 1, 3, 5, 7, 9]] and resized_rows == [6]
    assert torch.equal(resized, resize(ds.full, frames[indices]))  # as if every row were resized on its own
    assert resized.permute(0, 2, 3, 1).is_contiguous()
    # a view cropped from the shared resized frames is the view the transform makes from the decoded frames
    params = ds.full.draw(np.random.default_rng(1), 4)
    assert torch.equal(ds.full.apply(resized[:4], params), ds.full.apply(frames[indices[:4]], params))


def test_workers_get_distinct_streams_and_match_single_process(data):
    same_video = VideoRecord("MoveLeft/v_MoveLeft_g01_c01", NUM_FRAMES, 0)
    ds = vd.VideoFrameDataset([same_video] * 4, data / "frames", RECIPES["dualvar"], seed=5, num_frames=4,
                              size=32, resize=(36, 48))

    def batches(workers, epochs):
        loader = DataLoader(ds, batch_size=1, num_workers=workers, persistent_workers=workers > 0)
        out = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            out.append(torch.cat([b["clips"] for b in loader]))
        return out

    parallel = batches(2, [0, 1])
    serial = batches(0, [0, 1])
    for p, s in zip(parallel, serial):
        assert torch.equal(p, s)
    # items 0 and 1 (one per worker) show the same video: only their augmentation streams differ
    assert not torch.equal(parallel[0][0], parallel[0][1])
    assert not torch.equal(parallel[0], parallel[1])  # set_epoch reached the persistent workers


def test_holdout_split_is_disjoint_and_complete():
    records = [VideoRecord(f"C/v{i}", 30, i % 3) for i in range(50)]
    train, val = holdout_split(records, 10)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and set(train) | set(val) == set(records)
    expected = sorted(np.random.default_rng(666).choice(50, size=10, replace=False).tolist())
    assert [records.index(r) for r in val] == expected
    assert [r.frame_dir for r in train] == [r.frame_dir for r in records if r not in val]  # CSV order
    assert len(holdout_split(records, 0.2)[1]) == 10
    with pytest.raises(ValueError, match="--val-size"):
        holdout_split(records, 50)


def test_build_dataset_train_val_trainval(data):
    args = make_args(data / "csv", val_size=1)
    trainval = build_dataset(args, "trainval", RECIPES["finetune"]).records
    train = build_dataset(args, "train", RECIPES["finetune"]).records
    val = build_dataset(args, "val", RECIPES["finetune"]).records
    assert len(val) == 1 and len(train) == 2 and set(train) | set(val) == set(trainval)
    assert not set(train) & set(val)


def test_registry_paths_and_overrides(data, tmp_path, monkeypatch):
    demo = tmp_path / "root" / "demo"
    (demo / "frames").mkdir(parents=True)
    (demo / "csv").mkdir()
    write_class_index(demo / "csv" / "ClassInd.txt", CLASSES)
    monkeypatch.setenv("VSSL_DATA_ROOT", str(tmp_path / "root"))
    assert data_root() == tmp_path / "root" and data_root("elsewhere") == Path("elsewhere")
    paths = resolve_dataset("demo")
    assert paths.csv_dir == demo / "csv" and paths.frame_root == demo / "frames" and paths.num_classes == 3
    assert paths.default_val_size == 0.2
    paths = resolve_dataset("demo", csv_dir=str(data / "csv"), frame_root=str(data / "frames"))
    assert paths.csv_dir == data / "csv" and paths.frame_root == data / "frames"
    monkeypatch.delenv("VSSL_DATA_ROOT")
    assert data_root() == Path(vd.__file__).resolve().parents[1] / "data"
    with pytest.raises(LayoutError, match=r"(?s)ucf101/csv.*does not exist.*write_csv\.py"):
        resolve_dataset("ucf101", data_root_flag=str(tmp_path / "nowhere"))
    with pytest.raises(LayoutError, match="lists 3 classes but ucf101 has 101"):
        resolve_dataset("ucf101", csv_dir=str(data / "csv"), frame_root=str(data / "frames"))
    with pytest.raises(LayoutError, match="neither a registered dataset"):
        resolve_dataset(str(tmp_path / "missing_csv_folder"))


def expect_error(ds, pattern, workers=0):
    batches = iter(DataLoader(ds, batch_size=3, num_workers=workers))
    with pytest.raises(LayoutError, match=pattern):
        next(batches)
    if workers:
        # otherwise the worker is stopped at a later garbage collection, after a 5 s join timeout
        batches._shutdown_workers()


def test_missing_frame_folder(data):
    ds = build_dataset(make_args(data / "csv"), "test", RECIPES["finetune"])
    folder = data / "frames" / "Grow" / "v_Grow_g02_c01"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    # raised inside a worker: the re-raised error still names the folder and the fix
    expect_error(ds, r"(?s)frame folder .*v_Grow_g02_c01 does not exist.*extract_frame\.py", workers=1)


def test_fewer_frames_than_the_csv_says(data):
    ds = build_dataset(make_args(data / "csv"), "test", RECIPES["eval"])
    folder = data / "frames" / "MoveRight" / "v_MoveRight_g02_c01"
    for i in range(12, NUM_FRAMES):
        os.remove(folder / frame_name(i))
    expect_error(ds, r"(?s)image_00013\.jpg is missing.*has 12 frames on disk but the CSV says 20.*write_csv\.py")


def test_truncated_and_empty_jpeg(data):
    ds = build_dataset(make_args(data / "csv"), "test", RECIPES["eval"])
    path = data / "frames" / "MoveLeft" / "v_MoveLeft_g02_c01" / frame_name(0)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    expect_error(ds, r"(?s)cannot decode .*v_MoveLeft_g02_c01/image_00001\.jpg.*truncated or corrupt")
    path.write_bytes(b"")
    expect_error(ds, r"image_00001\.jpg is empty")


def test_csv_with_wrong_column_count(data):
    (data / "csv" / "test_split01.csv").write_text("Grow/v_Grow_g02_c01,20,2\nGrow/v_Grow_g01_c01,20,2,7\n")
    with pytest.raises(LayoutError, match=r"test_split01\.csv:2: .*4 columns"):
        build_dataset(make_args(data / "csv"), "test", RECIPES["eval"])


def test_frames_of_different_sizes(data):
    ds = build_dataset(make_args(data / "csv"), "test", RECIPES["eval"])
    cv2.imwrite(str(data / "frames" / "Grow" / "v_Grow_g02_c01" / frame_name(3)), np.zeros((30, 30, 3), np.uint8))
    expect_error(ds, r"(?s)frames of .*v_Grow_g02_c01 have different sizes.*extract_frame\.py")


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_decoders_agree(data):
    indices = np.array([0, 5, 5, 19])
    folder = data / "frames" / "Grow" / "v_Grow_g01_c01"
    frames = {name: frame_reader.read_frames(folder, indices, name).int() for name in frame_reader.DECODERS}
    assert frames["cv2"].shape == (4, 3, 40, 52)
    for name, f in frames.items():
        assert (f - frames["cv2"]).abs().max() <= 2, name  # libjpeg variants round differently
