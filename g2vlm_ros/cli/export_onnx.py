"""Exports the G2VLM geometry path of a checkpoint to ONNX for one (views, height, width) bucket.

  export_onnx --checkpoint /models/G2VLM-2B-MoT --views 2 --height 392 --width 518 --precision fp16
  export_onnx --checkpoint ../shared/parity/tiny_recon --token-ids ../shared/parity/tiny_recon/fixture.json

Writes `<output-dir>/g2vlm_geometry_<hash>_<bucket>_<precision>.onnx` and a `.json` manifest
beside it (default output dir: the package's engines/); <hash> is the checkpoint folder's
fingerprint (deploy.export.checkpoint_fingerprint), which backends match against. Checkpoints
without tokenizer files need --token-ids: a JSON file with "prompt_token_ids" and
"special_token_ids" (the same content as a `token_ids.json` in the folder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from g2vlm_ros.precision import PRECISIONS

DEFAULT_ENGINE_DIR = Path(__file__).resolve().parents[2] / "engines"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (official layout)")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--height", type=int, default=392)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_ENGINE_DIR)
    parser.add_argument("--external-data", action="store_true", help="store weights in <name>.onnx.data")
    parser.add_argument("--token-ids", type=Path, help="JSON with prompt_token_ids and special_token_ids")
    args = parser.parse_args(argv)

    from g2vlm_ros.deploy.export import Bucket, checkpoint_fingerprint, export_geometry_onnx
    from g2vlm_ros.model import CheckpointError, load_checkpoint

    try:
        ids = json.loads(args.token_ids.read_text()) if args.token_ids else {}
        model = load_checkpoint(args.checkpoint, device="cpu", dtype="fp32")
        result = export_geometry_onnx(model, Bucket(args.views, args.height, args.width), args.output_dir,
                                      precision=args.precision, opset=args.opset, external_data=args.external_data,
                                      prefix_token_ids=ids.get("prompt_token_ids"),
                                      special_token_ids=ids.get("special_token_ids"),
                                      model_hash=checkpoint_fingerprint(args.checkpoint))
    except (CheckpointError, ValueError, OSError) as error:
        print(f"export_onnx: {error}", file=sys.stderr)
        return 1
    manifest = result.manifest
    print(f"{result.onnx_path}\n{result.manifest_path}\nmodel {manifest['model_hash'][:12]}, bucket "
          f"{manifest['bucket']}, {manifest['precision']}, opset {manifest['opset']}, "
          f"{manifest['export_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
