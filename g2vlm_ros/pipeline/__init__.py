"""The ROS-free perception pipeline: frames in, windows through a backend, results and health out."""
