"""ROS-free spatial question answering: request checks and answerer interfaces."""
