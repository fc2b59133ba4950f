"""scripts/soak.py works end to end (a short run on the placeholder backend); its 10-minute figures with the
demo model are in the issue's closing note, not in CI."""
import importlib.util
import os
import re
import subprocess
import sys

from conftest import REPO


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_memory_is_judged_on_floors_that_ignore_a_window_s_temporaries_but_not_a_leak():
    rss_figures = _soak_module().rss_figures
    # 30 minutes of 1-s samples: 1000 MiB between windows, +600 MiB for 4 s of every 6-s window
    swinging = [(t, 1000.0 + (600.0 if t % 6 < 4 else 0.0)) for t in range(1, 1801)]
    steady = rss_figures(swinging, 1800, 60)
    assert steady.span_s == 180 and len(steady.spans) == 10
    assert steady.after_warmup == steady.at_half == steady.at_end == 1000.0 and steady.peak == 1600.0
    assert steady.second_half_growth == 0.0
    # the same swings on top of a leak of 10 MiB a minute: a span's floor is its first sample, 1150 MiB at 15 min
    # and 1270 MiB at 27 min: +10.4 %
    leaking = rss_figures([(t, rss + t / 6) for t, rss in swinging], 1800, 60)
    assert abs(leaking.second_half_growth - 120 / 1150 * 100) < 0.01
    # a store that fills in the first half (+200 MiB by minute 10) and stays: growth after warm-up, none after
    filling = rss_figures([(t, rss + min(t, 600) / 3) for t, rss in swinging], 1800, 60)
    assert filling.growth > 15.0 and filling.second_half_growth == 0.0


def test_a_short_soak_run_reports_every_figure(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "soak.py"), "--minutes", "0.4", "--warmup-s", "8",
                             "--backend", "placeholder", "--log", str(tmp_path / "node.log"),
                             "--ros-domain-id", os.environ["ROS_DOMAIN_ID"]],  # this test process's own domain
                            capture_output=True, text=True, timeout=180)
    report = result.stdout
    # exit 1 means a target missed; over 24 s only the two statistical targets may (the 10-minute run measures them)
    fails = re.findall(r"FAIL  (.+)", report)
    assert result.returncode == (1 if fails else 0), report + result.stderr
    assert set(fails) <= {"RSS floor growth over the second half < 5 %", "p95 latency < 2 x p50"}, report
    assert re.search(r"backend placeholder, exit 0$", report, re.MULTILINE), report  # the node stopped cleanly
    published = int(re.search(r"frames published per camera: (\d+)", report).group(1))
    assert published > 300, report  # about 30 Hz for 24 s
    processed = int(re.search(r"windows processed: (\d+)", report).group(1))
    assert processed > 20, report
    assert re.search(r"latency image stamp -> depth \(after warm-up, \d+ windows\): p50 \d+ ms", report), report
    floors = re.search(r"node RSS floor \(the lowest 1-s sample of each 5 s\): ([\d.]+) MiB after 8 s warm-up, "
                       r"([\d.]+) MiB at half time, ([\d.]+) MiB at the end \(([+-][\d.]+) % over the second half, "
                       r"[+-][\d.]+ % after warm-up\); peak ([\d.]+) MiB", report)
    assert floors, report
    after_warmup, at_half, at_end, second_half, peak = map(float, floors.groups())
    assert 0 < min(after_warmup, at_half, at_end) <= max(after_warmup, at_half, at_end) <= peak, report
    # the MiB are printed to 0.1 (each up to 0.05 off) and the percentage to 0.01
    rounding = 0.1 / at_half * 100 * (1 + at_end / at_half) / 2 + 0.005
    assert abs(second_half - (at_end - at_half) / at_half * 100) <= rounding + 1e-9, report
    spans = re.findall(r"([\d.]+) min (\d+) / (\d+)", report.split("node RSS floor / peak: ")[1].splitlines()[0])
    assert len(spans) >= 4 and all(int(floor) <= int(top) for _, floor, top in spans), report  # every 5 s of 24 s
    assert "PASS  no unanswered question" in report, report
    keyframes = int(re.search(r"map: windows_placed \d+, keyframes (\d+), redundant_sets \d+, cloud_points \d+",
                              report).group(1))
    assert keyframes >= 1, report  # the map's stores at the end, the figures behind "memory stays bounded"
    images, image_mib = re.search(r"loop_images (\d+), loop_image_mib ([\d.]+)", report).groups()
    assert 1 <= int(images) <= 200 and float(image_mib) > 0, report  # 200: the default loop_closure_images
    asked, answered = map(int, re.search(r"questions: (\d+) asked, (\d+) answered", report).groups())
    assert asked >= 15 and answered >= asked - 5, report
