"""`make demo`'s program end to end: the node, the player and the monitor in separate processes on
the embedded demo model, the printed report, and previews that show the synthetic room."""
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from g2vlm_ros.cli.previews import CAPTION_HEIGHT


def test_the_demo_reports_rates_latency_and_an_answer_and_writes_previews(tmp_path):
    result = subprocess.run([sys.executable, "-m", "g2vlm_ros.cli.demo", "--seconds", "8", "--output", str(tmp_path),
                             "--ros-domain-id", os.environ["ROS_DOMAIN_ID"]],  # this test process's own domain
                            capture_output=True, text=True, timeout=420)
    report = result.stdout
    assert result.returncode == 0, report + result.stderr
    assert "checkpoint: embedded demo model" in report
    rates = dict(re.findall(r"^\s+(/\S+)\s+([\d.]+) Hz$", report, re.MULTILINE))
    assert float(rates["/camera/image_raw"]) > 1.0, report  # the player paces 2 Hz by the clock, load or not
    for topic in ("/g2vlm/camera/depth_relative", "/g2vlm/points", "/g2vlm/path"):
        # the demo measures until outputs span two intervals: a rate, however slow the machine (no bound on speed)
        assert float(rates[topic]) > 0, report
    assert re.search(r"latency, image stamp -> depth received: p50 \d+ ms", report), report
    assert re.search(r"value: \d+\.\d+ relative", report), report  # answered, in relative units: no metric scale

    depth = np.asarray(Image.open(tmp_path / "depth.png").convert("RGB"))[:-CAPTION_HEIGHT]
    prediction = depth[:, 648:1288].astype(float)  # right of the 640-px camera image and the gap
    assert prediction.std() > 20  # a depth map with structure, not a flat colour
    topdown = np.asarray(Image.open(tmp_path / "topdown.png").convert("RGB"))[:-CAPTION_HEIGHT]
    assert ((topdown != 255).any(axis=-1)).mean() > 0.1  # the room covers a good part of the plot
    ply = (tmp_path / "points.ply").read_bytes()
    vertices = int(re.search(rb"element vertex (\d+)", ply).group(1))
    assert vertices > 50_000  # a 4-view window at stride 2
    assert (tmp_path / "confidence.png").is_file()
    # the map: keyframes chained into one frame, scored against the synthetic walk's truth and drawn with it
    points, keyframes = (int(n) for n in re.search(r"map: (\d+) points, (\d+) keyframes", report).groups())
    assert points > 1000 and keyframes >= 3, report
    assert re.search(r"ATE \d+\.\d+ m; a camera that never moved: \d+\.\d+ m", report), report
    picture = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"))[:-CAPTION_HEIGHT].astype(int)
    green = (picture[..., 1] > 120) & (picture[..., 0] < 60) & (picture[..., 2] < 100)  # the true path, on top
    red = (picture[..., 0] > 200) & (picture[..., 1] < 60) & (picture[..., 2] < 60)  # the keyframes and their path
    assert green.sum() > 20 and red.sum() > 50, (green.sum(), red.sum())
