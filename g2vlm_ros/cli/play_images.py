"""Publishes a folder of images (or synthetic frames) as a camera topic.

  play_images --folder ../shared/data/arkitscenes --camera camera --rate 5
  play_images --synthetic --camera camera --rate 10 --count 50

Images are sent as sensor_msgs/Image (rgb8 or bgr8) on /<camera>/image_raw with the frame
<camera>_optical and the current time as stamp, in name order, looping unless --once is given.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def load_folder(folder: Path, max_width: int) -> list[np.ndarray]:
    """Loads all images of `folder` as RGB uint8, shrunk to at most `max_width` pixels wide."""
    from PIL import Image as PILImage

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    frames = []
    for path in paths:
        with PILImage.open(path) as image:
            image = image.convert("RGB")
            if image.width > max_width:
                image = image.resize((max_width, round(image.height * max_width / image.width)),
                                     PILImage.Resampling.BILINEAR)
            frames.append(np.asarray(image, dtype=np.uint8))
    return frames


def synthetic_frames(count: int, width: int = 640, height: int = 480) -> list[np.ndarray]:
    """A checkerboard floor under a sky gradient, drifting sideways: enough texture to look at."""
    v, u = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(count):
        shift = index * 8
        checker = (((u + shift) // 40 + v // 40) % 2).astype(np.float32)
        floor = v > height // 2
        frame = np.empty((height, width, 3), np.float32)
        frame[..., 0] = np.where(floor, 60 + 140 * checker, 90 + 80 * v / height)
        frame[..., 1] = np.where(floor, 60 + 120 * checker, 140 + 60 * v / height)
        frame[..., 2] = np.where(floor, 50 + 60 * checker, 220)
        frames.append(frame.clip(0, 255).astype(np.uint8))
    return frames


def frame_sequence(frames: list[np.ndarray], once: bool, count: Optional[int]) -> Iterator[np.ndarray]:
    sent = 0
    while True:
        for frame in frames:
            if count is not None and sent >= count:
                return
            yield frame
            sent += 1
        if once:
            return


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="folder of .jpg/.png images, played in name order")
    source.add_argument("--synthetic", action="store_true", help="generated frames (no files needed)")
    parser.add_argument("--camera", default="camera", help="camera name: topic /<camera>/image_raw")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second")
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8")
    parser.add_argument("--max-width", type=int, default=640, help="shrink wider images to this width")
    parser.add_argument("--count", type=int, help="stop after this many frames")
    parser.add_argument("--once", action="store_true", help="play the folder once instead of looping")
    args, ros_args = parser.parse_known_args(argv)

    frames = load_folder(args.folder, args.max_width) if args.folder else synthetic_frames(30)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from g2vlm_ros.ros.conversions import numpy_to_image

    rclpy.init(args=ros_args)
    node = rclpy.create_node(f"play_images_{args.camera}")
    publisher = node.create_publisher(Image, f"/{args.camera}/image_raw", qos_profile_sensor_data)
    node.get_logger().info(f"playing {len(frames)} frame(s) on /{args.camera}/image_raw at {args.rate} Hz")
    period = 1.0 / args.rate
    next_time = time.monotonic()
    try:
        for frame in frame_sequence(frames, args.once, args.count):
            header = Header(frame_id=f"{args.camera}_optical", stamp=node.get_clock().now().to_msg())
            msg = numpy_to_image(frame, "rgb8", header)
            if args.encoding == "bgr8":
                msg = numpy_to_image(np.ascontiguousarray(frame[..., ::-1]), "rgb8", header)
                msg.encoding = "bgr8"
            publisher.publish(msg)
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
