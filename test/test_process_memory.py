"""A long run of the map does not grow the process through heap fragmentation (g2vlm_ros/process_memory.py): with
the heap trimmed after each window, as the pipeline does, 100 map keyframes fed with window-sized tensors (as a
CPU model gives) cost megabytes of resident memory, not the ~0.8 MB per keyframe without it. Its own process:
the measurement needs a fresh heap."""
from __future__ import annotations

import subprocess
import sys

import pytest

RUN = """
import gc, sys
import numpy as np
from g2vlm_ros.process_memory import HeapTrimmer
trim = HeapTrimmer(period_s=0.0)
if sys.argv[1] == "trimmed" and not trim.available:
    print("no glibc"); sys.exit(0)
from g2vlm_ros.cli.bench_node_overhead import walking_result
from g2vlm_ros.geometry.pinhole import intrinsics_from_fov
from g2vlm_ros.mapping.world_map import MapSettings, WorldMap
from g2vlm_ros.pipeline.mapping_stage import view_observations

def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

k = intrinsics_from_fov(518, 392, np.deg2rad(60))
depth = np.random.default_rng(2).uniform(1, 3, (64, 392, 518)).astype(np.float32)
world = WorldMap(MapSettings(loop_closure=False))
for window in range(130):
    result = walking_result(4, window % 64, 0.3, depth, k)
    keys = [("cam0", (window + i + 1) * 500_000_000) for i in range(4)]
    world.add_window(view_observations(keys, [True] * 4, result, 1.0, 8), keys[-1][1])
    del result
    if sys.argv[1] == "trimmed":
        trim(float(window))
    if window == 29:
        gc.collect()
        start = rss_mib()
gc.collect()
print(f"{rss_mib() - start:.1f} {world.stats().keyframes}")
"""


def run(mode: str) -> str:
    output = subprocess.run([sys.executable, "-c", RUN, mode], capture_output=True, text=True, timeout=300)
    assert output.returncode == 0, output.stderr
    return output.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_a_hundred_map_keyframes_cost_megabytes_with_the_heap_trimmed_after_each_window():
    report = run("trimmed")
    if report == "no glibc":
        pytest.skip("not glibc")
    growth_mib, keyframes = report.split()
    assert int(keyframes) > 130  # every window added a keyframe: the map grew by 100 of them while measured
    assert float(growth_mib) < 30, report  # untrimmed: 0.8-1.8 MiB per keyframe here (77-181 MiB)
