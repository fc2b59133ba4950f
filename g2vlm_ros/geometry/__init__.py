"""ROS-free geometry math: pinhole projection, resampling, poses."""
