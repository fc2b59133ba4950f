"""ROS-free playback sources: image folders, videos, synthetic scenes and rosbag2/MCAP recordings."""
