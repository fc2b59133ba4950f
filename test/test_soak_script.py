"""scripts/soak.py works end to end (a short run on the placeholder backend); its 10-minute figures with the
demo model are in the issue's closing note, not in CI."""
import os
import re
import subprocess
import sys

from conftest import REPO


def test_a_short_soak_run_reports_every_figure(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "soak.py"), "--minutes", "0.4", "--warmup-s", "8",
                             "--backend", "placeholder", "--log", str(tmp_path / "node.log"),
                             "--ros-domain-id", os.environ["ROS_DOMAIN_ID"]],  # this test process's own domain
                            capture_output=True, text=True, timeout=180)
    report = result.stdout
    # exit 1 means a target missed; over 24 s only the two statistical targets may (the 10-minute run measures them)
    fails = re.findall(r"FAIL  (.+)", report)
    assert result.returncode == (1 if fails else 0), report + result.stderr
    assert set(fails) <= {"RSS growth over the second half < 5 %", "p95 latency < 2 x p50"}, report
    assert re.search(r"backend placeholder, exit 0$", report, re.MULTILINE), report  # the node stopped cleanly
    published = int(re.search(r"frames published per camera: (\d+)", report).group(1))
    assert published > 300, report  # about 30 Hz for 24 s
    processed = int(re.search(r"windows processed: (\d+)", report).group(1))
    assert processed > 20, report
    assert re.search(r"latency image stamp -> depth \(after warm-up, \d+ windows\): p50 \d+ ms", report), report
    assert re.search(r"node RSS: [\d.]+ MiB after 8 s warm-up, [\d.]+ MiB at the end \([+-][\d.]+ %\); "
                     r"[\d.]+ MiB at half time \([+-][\d.]+ % over the second half\)", report), report
    assert "PASS  no unanswered question" in report, report
    keyframes = int(re.search(r"map: windows_placed \d+, keyframes (\d+), redundant_sets \d+, cloud_points \d+",
                              report).group(1))
    assert keyframes >= 1, report  # the map's stores at the end, the figures behind "memory stays bounded"
    asked, answered = map(int, re.search(r"questions: (\d+) asked, (\d+) answered", report).groups())
    assert asked >= 15 and answered >= asked - 5, report
