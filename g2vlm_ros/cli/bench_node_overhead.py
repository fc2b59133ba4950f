"""What the node costs besides the model, per 640x480 view: a benchmark, not a test.

  bench_node_overhead --cameras 1 4 --windows 50

Per window it runs the node's own code on real messages: Image -> RGB conversion and checks
(CameraInput.accept), time alignment and keyframing (WindowAssembler), preprocessing to the model
input (prepare_images), then, with the model's output replaced by a precomputed result of the right
shape, everything the node does after inference (pipeline.postprocess.window_outputs: depth resampled
to the camera, cloud selection; GeometryPublisher.publish: camera_info, pose, PoseArray, Path, TF list,
cloud packing, rclpy publish).
Prints ms per view (median over windows) and the ratio to a plain memcpy of the bytes those
messages carry, measured in the same run.

Then the mapping stage alone (pipeline.mapping_stage.MapStage.place: observations from the result, alignment
to the map, keyframes, pose graph update), per window of `--map-window` views of one camera walking forwards
(every window shares all but one keyframe with the previous one, as the node's windows do), and the map cloud
build that `~/map` runs at most once a second (MapStage.cloud), with the node's default map settings.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np

WIDTH, HEIGHT = 640, 480


def canned_result(views: int):
    """A GeometryResult of the size G2VLM returns for 640x480 inputs (518x392), finite values."""
    import torch

    from g2vlm_ros.backends.backend import GeometryResult
    from g2vlm_ros.geometry.pinhole import backproject_depth, intrinsics_from_fov

    k = intrinsics_from_fov(518, 392, np.deg2rad(60))
    depth = np.random.default_rng(0).uniform(1, 3, (views, 392, 518)).astype(np.float32)
    local = np.stack([backproject_depth(d, k) for d in depth])
    poses = np.tile(np.eye(4, dtype=np.float32), (views, 1, 1))
    return GeometryResult(depth=torch.from_numpy(depth), local_points=torch.from_numpy(local),
                          world_points=torch.from_numpy(local.copy()), camera_to_world=torch.from_numpy(poses),
                          intrinsics=torch.from_numpy(np.repeat(k[None], views, 0)),
                          colors=torch.zeros(views, 392, 518, 3, dtype=torch.uint8))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cloud-stride", type=int, default=2)
    parser.add_argument("--map-window", type=int, default=4, help="views per window for the mapping stage")
    parser.add_argument("--map-windows", type=int, default=200, help="windows placed for the mapping stage")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    from rclpy.lifecycle import LifecycleNode
    from rclpy.qos import QoSProfile
    from std_msgs.msg import Header

    from g2vlm_ros.backends.preprocess import prepare_images
    from g2vlm_ros.pipeline.postprocess import OutputPolicy, window_outputs
    from g2vlm_ros.pipeline.windowing import WindowAssembler, WindowPolicy
    from g2vlm_ros.ros.camera_input import CameraInput
    from g2vlm_ros.ros.conversions import numpy_to_image
    from g2vlm_ros.ros.outputs import FrameSettings, GeometryPublisher
    from g2vlm_ros.ros.params import CameraConfig
    from g2vlm_ros.ros.tf_output import TfOutput

    rclpy.init()
    node = LifecycleNode("g2vlm_overhead_bench")
    rng = np.random.default_rng(1)
    policy = OutputPolicy(metres_per_unit=None, cloud_stride=args.cloud_stride, confidence_threshold=0.0)
    settings = FrameSettings(map_frame="g2vlm_map")
    rows = []
    for cameras in args.cameras:
        names = [f"cam{i}" for i in range(cameras)]
        inputs = [CameraInput(CameraConfig(n, f"/{n}/image_raw", "", "raw", "")) for n in names]
        assembler = WindowAssembler(names, WindowPolicy(window_size=1))
        publisher = GeometryPublisher(node, names, False, QoSProfile(depth=5), TfOutput(node, False))
        publisher.set_active(True)
        messages = [numpy_to_image(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8), "rgb8",
                                   Header(frame_id=f"{n}_optical")) for n in names]
        result = canned_result(cameras)
        published_bytes = []
        original = publisher.points.publish

        def counting_publish(msg, original=original, published_bytes=published_bytes):
            published_bytes.append(len(msg.data))
            original(msg)

        publisher.points.publish = counting_publish
        samples = []
        for window in range(args.warmup + args.windows):
            for msg in messages:  # a new capture time per window, shared by the cameras
                msg.header.stamp.sec = window + 1
            start = time.perf_counter()
            for state, msg in zip(inputs, messages, strict=True):
                assembler.add(state.accept(msg))
            frames = assembler.poll().frames
            prepare_images([frame.rgb for frame in frames], __import__("torch").device("cpu"))
            publisher.publish(window_outputs(frames, result, policy, names[0]), settings)
            if window >= args.warmup:
                samples.append((time.perf_counter() - start) * 1e3)
        per_view = statistics.median(samples) / cameras
        # bytes through the pipeline per view: the input image, the published depth and camera_info
        # images, and the view's share of the cloud
        moved = WIDTH * HEIGHT * 3 + WIDTH * HEIGHT * 4 + published_bytes[-1] // cameras
        source, target = np.ones(moved, np.uint8), np.empty(moved, np.uint8)
        copies = []
        for _ in range(50):
            begin = time.perf_counter()
            np.copyto(target, source)
            copies.append((time.perf_counter() - begin) * 1e3)
        memcpy = statistics.median(copies)
        rows.append((cameras, per_view, moved, memcpy))
        print(f"  {cameras} camera(s): {per_view:.2f} ms per view", flush=True)

    print(f"\n{'cameras':>7} {'ms/view':>8} {'MB/view':>8} {'memcpy ms':>10} {'x memcpy':>9}")
    for cameras, per_view, moved, memcpy in rows:
        print(f"{cameras:>7} {per_view:>8.2f} {moved / 1e6:>8.2f} {memcpy:>10.3f} {per_view / memcpy:>9.1f}")
    node.destroy_node()
    rclpy.try_shutdown()
    map_stage(args.map_window, args.map_windows, args.warmup)
    return 0


def walking_result(views: int, first: int, step: float, depth: np.ndarray, k: np.ndarray):
    """The window of keyframes first .. first+views-1 of a camera moving `step` forward per keyframe, in the
    frame of the window's first view (as G2VLM's), each keyframe seeing its own fixed depth map."""
    import torch

    from g2vlm_ros.backends.backend import GeometryResult
    from g2vlm_ros.geometry.pinhole import backproject_depth

    local = np.stack([backproject_depth(depth[(first + i) % len(depth)], k) for i in range(views)])
    poses = np.tile(np.eye(4, dtype=np.float32), (views, 1, 1))
    poses[:, 2, 3] = step * np.arange(views)
    world = np.einsum("nij,nhwj->nhwi", poses[:, :3, :3], local) + poses[:, None, None, :3, 3]
    return GeometryResult(depth=torch.from_numpy(local[..., 2].copy()), local_points=torch.from_numpy(local),
                          world_points=torch.from_numpy(world.astype(np.float32)),
                          camera_to_world=torch.from_numpy(poses),
                          intrinsics=torch.from_numpy(np.repeat(k[None], views, 0).astype(np.float32)),
                          colors=torch.zeros(views, 392, 518, 3, dtype=torch.uint8))


def map_stage(views: int, windows: int, warmup: int) -> None:
    from g2vlm_ros.geometry.pinhole import intrinsics_from_fov
    from g2vlm_ros.pipeline.frame import Frame
    from g2vlm_ros.pipeline.mapping_stage import MapStage, MapStageSettings
    from g2vlm_ros.pipeline.windowing import Window

    k = intrinsics_from_fov(518, 392, np.deg2rad(60))
    rng = np.random.default_rng(2)
    depth = rng.uniform(1, 3, (64, 392, 518)).astype(np.float32)
    stage = MapStage(MapStageSettings(), metric=False, log_error=print)
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    place_ms = []
    for window in range(warmup + windows):
        frames = [Frame("cam0", "cam0_optical", (window + i + 1) * 500_000_000, rgb, None, None)
                  for i in range(views)]
        result = walking_result(views, window % len(depth), 0.3, depth, k)  # keyframe i sees depth[i % 64]
        start = time.perf_counter()
        placement = stage.place(Window(frames, ["cam0"], views, frames[-1].stamp_ns, frames[-1].stamp_ns), result,
                                1.0, frames[-1].stamp_ns)
        if window >= warmup:
            place_ms.append((time.perf_counter() - start) * 1e3)
        if placement is None:
            raise RuntimeError("the map refused a window of the benchmark")
    start = time.perf_counter()
    points, _ = stage.cloud()  # built once after the last window (later calls reuse it until the next window)
    cloud_ms = (time.perf_counter() - start) * 1e3
    status = stage.status()
    print(f"\nmapping stage, {views}-view windows of one camera, {windows} windows: "
          f"{statistics.median(place_ms):.2f} ms per window (median), p95 "
          f"{np.percentile(place_ms, 95):.2f} ms; map: {status.stats['keyframes']} keyframes, "
          f"{status.last_status}; map cloud build {cloud_ms:.1f} ms for {len(points)} points")


if __name__ == "__main__":
    sys.exit(main())
