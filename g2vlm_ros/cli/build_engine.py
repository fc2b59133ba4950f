"""Builds a TensorRT engine from an exported G2VLM geometry ONNX graph (see export_onnx).

  build_engine engines/g2vlm_geometry_<hash>_1x392x518_fp16.onnx                 # for this machine's GPU
  build_engine model.onnx --engine-dir engines --compute-capability sm89        # TensorRT-RTX, no GPU needed

Reads the export manifest beside the graph (`<name>.json`, or --manifest), builds a strongly typed
engine with TensorRT (or TensorRT-RTX where full TensorRT is missing) and writes
`<engine-dir>/<key>.engine` plus a `<key>.json` manifest that the runtime checks before loading.
The default engine dir is the ONNX graph's folder, where the node looks for both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from g2vlm_ros.deploy.engine_build import build_engine
from g2vlm_ros.deploy.engine_keys import EngineError


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="build_engine", description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path, help="exported geometry graph (.onnx, manifest beside it)")
    parser.add_argument("--engine-dir", type=Path, help="output folder (default: the ONNX graph's folder)")
    parser.add_argument("--manifest", type=Path, help="export manifest (default: <onnx name>.json beside it)")
    parser.add_argument("--compute-capability", help="target GPU, e.g. sm89 (default: this machine's GPU)")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (GiB)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file (default: one shared in engine-dir)")
    parser.add_argument("--no-progress", action="store_true", help="no build-phase progress lines")
    return parser.parse_args(argv)


def to_stderr(line: str) -> None:
    """Progress and TensorRT messages go to stderr, so stdout carries only the result."""
    print(line, file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        build = build_engine(args.onnx, args.manifest, args.engine_dir or args.onnx.parent,
                             compute_capability=args.compute_capability, workspace_gib=args.workspace_gib,
                             timing_cache_path=args.timing_cache, progress=not args.no_progress, log=to_stderr)
    except EngineError as error:
        print(f"build_engine: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    key = build.key
    print(build.engine_path)
    print(build.manifest_path)
    print(f"model {key.model_hash[:12]}, bucket {key.bucket()}, {key.precision}, {key.flavour} {key.trt_version}, "
          f"{key.compute_capability}, built in {build.build_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
