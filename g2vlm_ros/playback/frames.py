"""Image sequences to play as a camera: a folder of images, a video file, or synthetic rooms.

Each source is an iterable of PlaybackFrame (RGB uint8 plus the intrinsics when they are known)
that can be iterated again for looping, with the rate it was recorded at when it has one. Frames
are decoded one at a time, so a long video never has to fit in memory.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")
SYNTHETIC_SEED = 3  # a room with objects on the floor and a wall corner in view: easy to recognise


@dataclass
class PlaybackFrame:
    rgb: np.ndarray  # [H,W,3] uint8
    intrinsics: Optional[np.ndarray] = None  # [3,3] pinhole K for this image size, when known


def shrink(rgb: np.ndarray, max_width: int) -> np.ndarray:
    """`rgb` resized to at most `max_width` pixels wide (aspect kept)."""
    height, width = rgb.shape[:2]
    if max_width <= 0 or width <= max_width:
        return rgb
    from PIL import Image

    size = (max_width, max(1, round(height * max_width / width)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


class FolderSequence:
    """The images of a folder in name order (numbered file names keep their recording order)."""

    def __init__(self, folder: Path, max_width: int = 640):
        self.paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self.max_width = max_width
        self.rate_hz: Optional[float] = None
        self.description = f"{len(self.paths)} images from {folder}"

    def __iter__(self) -> Iterator[PlaybackFrame]:
        from PIL import Image

        for path in self.paths:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
            yield PlaybackFrame(shrink(rgb, self.max_width))


class VideoSequence:
    """The frames of a video file, decoded with PyAV (FFmpeg), or OpenCV where PyAV is missing."""

    def __init__(self, path: Path, max_width: int = 640):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no video file {path}")
        self.max_width = max_width
        self.rate_hz, frames = self._probe()
        self.description = f"video {path} ({frames} frames at {self.rate_hz:.3g} fps)"

    def _probe(self) -> tuple[float, int]:
        try:
            import av
        except ImportError:
            import cv2

            capture = cv2.VideoCapture(str(self.path))
            if not capture.isOpened():
                raise ValueError(f"cannot open video {self.path}") from None
            rate, count = capture.get(cv2.CAP_PROP_FPS) or 30.0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            capture.release()
            return float(rate), count
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{self.path} has no video stream")
                stream = container.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 30.0)
                return rate, int(stream.frames)
        except av.error.FFmpegError as error:
            raise ValueError(f"cannot open video {self.path}: {error}") from error

    def __iter__(self) -> Iterator[PlaybackFrame]:
        try:
            import av
        except ImportError:
            yield from self._iterate_opencv()
            return
        with av.open(str(self.path)) as container:
            for frame in container.decode(video=0):
                yield PlaybackFrame(shrink(frame.to_ndarray(format="rgb24"), self.max_width))

    def _iterate_opencv(self) -> Iterator[PlaybackFrame]:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield PlaybackFrame(shrink(np.ascontiguousarray(bgr[..., ::-1]), self.max_width))
        finally:
            capture.release()


class SyntheticSequence:
    """A camera walking through one procedural room (g2vlm_ros.training.scenes) and back again.

    The room is rendered once with exact intrinsics; the walk plays forwards then backwards, so a
    looped playback never jumps. Consecutive views are 0.1-0.4 m apart, as in the demo model's
    training, and the seed picks the room."""

    def __init__(self, seed: int = SYNTHETIC_SEED, views: int = 12, width: int = 640, height: int = 480):
        from g2vlm_ros.training.scenes import render_scenes

        scene = render_scenes(1, views, height, width, seed=seed)
        images = (scene.images[0].permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        order = list(range(views)) + list(range(views - 2, 0, -1))
        self.frames = [PlaybackFrame(images[i], scene.intrinsics[0, i].numpy().astype(np.float64)) for i in order]
        # each played frame's true camera-to-world (m; the room's frame, y down), for scoring a trajectory
        self.camera_to_world = [scene.camera_to_world[0, i].numpy().astype(np.float64) for i in order]
        self.depth = scene.depth[0].numpy()  # exact depth of the `views` rendered views (m), for checks
        self.rate_hz: Optional[float] = None
        self.description = f"synthetic room (seed {seed}), {views} views walked forwards and back"

    def __iter__(self) -> Iterator[PlaybackFrame]:
        return iter(self.frames)


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def open_sequence(source: str, max_width: int = 640, seed: int = SYNTHETIC_SEED):
    """`synthetic`, a folder of images or a video file -> a frame sequence (see the classes above).

    Images wider than `max_width` are shrunk (G2VLM works at 518 px wide anyway)."""
    if source == "synthetic":
        return SyntheticSequence(seed=seed)  # 640x480, a common camera size
    path = Path(source)
    if path.is_dir():
        return FolderSequence(path, max_width)
    if is_video(path):
        return VideoSequence(path, max_width)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"{path} is a single image: give its folder to play it")
    raise FileNotFoundError(f"{source} is not 'synthetic', a folder of images, a video "
                            f"({', '.join(VIDEO_SUFFIXES)}) or a rosbag2 recording")
