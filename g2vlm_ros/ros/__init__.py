"""The ROS 2 layer: the only part of g2vlm_ros that imports rclpy."""
