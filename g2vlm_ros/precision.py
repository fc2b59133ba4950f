"""The numeric precisions the package computes, exports and builds engines in, named once.

Node parameters, backend selection, the ONNX exporter, engine keys and the CLIs all accept these names and
import them from here, so adding or dropping a precision is one edit (the tables that map a name to a torch
dtype or a TensorRT type are built from this tuple and fail at import if one is missing). No imports: the
engine code and parameter validation use it without torch.
"""

PRECISIONS = ("fp32", "fp16", "bf16")
AUTO_PRECISION = "auto"  # the torch backend picks per device (bf16 on GPUs that support it, fp32 on the CPU)
PRECISION_CHOICES = (AUTO_PRECISION,) + PRECISIONS  # what the node's `precision` parameter accepts
