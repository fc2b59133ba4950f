"""Cost of the mapping stage per window, without the model: `python -m g2vlm_ros.mapping.benchmark`.

Plays synthetic windows (exact geometry in random gauges, see synthetic.py) through a WorldMap and reports the
time of each add_window call (alignment, keyframe storage, graph update, placement), and the time of one map
cloud build. The default is the node's 4-view window: two cameras, two sets, points strided to 48x64 per view.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Optional

import numpy as np

from g2vlm_ros.mapping.synthetic import ellipse_walk, synthetic_sequence
from g2vlm_ros.mapping.world_map import MapSettings, WorldMap


def benchmark_mapping(windows: int = 120, cameras: int = 2, window_size: int = 2, grid: tuple[int, int] = (48, 64),
                      settings: Optional[MapSettings] = None, seed: int = 0, noisy: bool = False,
                      descriptor_size: int = 1024) -> dict[str, float]:
    """Milliseconds per add_window (median, 90th percentile, max after the first window; wall clock, and the
    median of the process's CPU time, which a busy machine inflates less) and per cloud build.

    noisy: the issue's noisy backend (1 degree and 2 % pose noise, 2 % depth noise, 5 % wrong pixels), which
    takes the robust alignment more passes; descriptor_size: random global descriptors per view (0: none), so the
    loop-candidate search is part of the cost (random descriptors never pass its similarity bar).
    """
    noise = dict(pose_noise_deg=1.0, pose_noise_fraction=0.02, depth_noise=0.02, outlier_fraction=0.05) if noisy else {}
    sequence = synthetic_sequence(ellipse_walk(windows + window_size - 1, turns=2.0), window_size=window_size,
                                  cameras=cameras, grid=grid, seed=seed, **noise)
    if descriptor_size:
        rng = np.random.default_rng(seed)
        sequence.windows = [[dataclasses.replace(view, descriptor=rng.normal(size=descriptor_size).astype(np.float32))
                             for view in views] for views in sequence.windows]
    world = WorldMap(settings or MapSettings())
    times, cpu_times = [], []
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        started, cpu_started = time.perf_counter(), time.process_time()
        world.add_window(views, stamp)
        times.append(1000.0 * (time.perf_counter() - started))
        cpu_times.append(1000.0 * (time.process_time() - cpu_started))
    started = time.perf_counter()
    points, _ = world.cloud()
    cloud_ms = 1000.0 * (time.perf_counter() - started)
    steady, cpu_steady = np.asarray(times[1:]), np.asarray(cpu_times[1:])
    return {"views_per_window": float(cameras * window_size), "windows": float(len(times)),
            "median_ms": float(np.median(steady)), "p90_ms": float(np.percentile(steady, 90)),
            "max_ms": float(steady.max()), "median_cpu_ms": float(np.median(cpu_steady)),
            "cloud_build_ms": cloud_ms, "cloud_points": float(len(points)), "keyframes": float(world.stats().keyframes)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=120)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--window-size", type=int, default=2)
    parser.add_argument("--grid", type=int, nargs=2, default=(48, 64), metavar=("ROWS", "COLUMNS"))
    parser.add_argument("--noisy", action="store_true", help="pose, depth and outlier noise as in issue 15")
    parser.add_argument("--descriptor-size", type=int, default=1024, help="0: no loop-candidate search")
    args = parser.parse_args(argv)
    result = benchmark_mapping(args.windows, args.cameras, args.window_size, tuple(args.grid), noisy=args.noisy,
                               descriptor_size=args.descriptor_size)
    for name, value in result.items():
        print(f"{name:>18}: {value:.2f}")


if __name__ == "__main__":
    main()
