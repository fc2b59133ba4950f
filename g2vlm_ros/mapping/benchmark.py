"""Cost of the mapping stage per window, without the model: `python -m g2vlm_ros.mapping.benchmark`.

Plays synthetic windows (exact geometry in random gauges, see synthetic.py) through a WorldMap and reports the
time of each add_window call (alignment, keyframe storage, graph update, placement), and the time of one map
cloud build. The default is the node's 4-view window: two cameras, two sets, points strided to 48x64 per view.
"""
from __future__ import annotations

import argparse
import time
from typing import Optional

import numpy as np

from g2vlm_ros.mapping.synthetic import ellipse_walk, synthetic_sequence
from g2vlm_ros.mapping.world_map import MapSettings, WorldMap


def benchmark_mapping(windows: int = 120, cameras: int = 2, window_size: int = 2, grid: tuple[int, int] = (48, 64),
                      settings: Optional[MapSettings] = None, seed: int = 0) -> dict[str, float]:
    """Milliseconds per add_window (median, 90th percentile, max after the first window) and per cloud build."""
    sequence = synthetic_sequence(ellipse_walk(windows + window_size - 1, turns=2.0), window_size=window_size,
                                  cameras=cameras, grid=grid, seed=seed)
    world = WorldMap(settings or MapSettings())
    times = []
    for views, stamp in zip(sequence.windows, sequence.stamps, strict=True):
        started = time.perf_counter()
        world.add_window(views, stamp)
        times.append(1000.0 * (time.perf_counter() - started))
    started = time.perf_counter()
    points, _ = world.cloud()
    cloud_ms = 1000.0 * (time.perf_counter() - started)
    steady = np.asarray(times[1:])
    return {"views_per_window": float(cameras * window_size), "windows": float(len(times)),
            "median_ms": float(np.median(steady)), "p90_ms": float(np.percentile(steady, 90)),
            "max_ms": float(steady.max()), "cloud_build_ms": cloud_ms, "cloud_points": float(len(points)),
            "keyframes": float(world.stats().keyframes)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=120)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--window-size", type=int, default=2)
    parser.add_argument("--grid", type=int, nargs=2, default=(48, 64), metavar=("ROWS", "COLUMNS"))
    args = parser.parse_args(argv)
    result = benchmark_mapping(args.windows, args.cameras, args.window_size, tuple(args.grid))
    for name, value in result.items():
        print(f"{name:>18}: {value:.2f}")


if __name__ == "__main__":
    main()
