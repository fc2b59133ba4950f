"""ROS-free inference backends: the backend interface, the torch, onnxruntime and tensorrt backends, the
geometry-free placeholder, device preprocessing and backend selection (`registry`)."""
