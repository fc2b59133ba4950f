"""g2vlm_ros: G2VLM geometry and spatial reasoning for ROS 2.

Layout: `geometry/`, `backends/`, `deploy/` and `pipeline/` are ROS-free (numpy/torch only) and never import
`ros/`; `ros/` is the only place that imports rclpy; `cli/` holds the console scripts.
"""

__version__ = "0.1.0"
