"""ROS-free inference runtime: the backend interface, backend selection and the inference worker."""
