"""The backend benchmark runs on the CPU with the tiny configuration and reports the node's own post-processing
(pipeline.postprocess.window_outputs) beside the model and the simplified end-to-end figure."""
import json

from g2vlm_ros.cli import bench_backends


def test_the_benchmark_reports_the_node_end_to_end_figure(tmp_path):
    out = tmp_path / "bench.json"
    assert bench_backends.main(["--config", "tiny", "--device", "cpu", "--views", "2", "--warmup", "1",
                                "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["views"] == 2 and row["backend"].startswith("torch")
    for key in ("end_to_end_ms", "node_end_to_end_ms", "model_ms", "floor_ms"):
        assert row[key] > 0, (key, row)
