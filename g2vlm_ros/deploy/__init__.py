"""Build-time tools, kept apart from the backends that run inference: ONNX export of the geometry path and
TensorRT engines (keys and manifests, build, build progress, load and verify).

The tensorrt backend imports the engine loader from here, so that the check that refuses a stale engine is
the same code that wrote the engine's manifest.
"""
