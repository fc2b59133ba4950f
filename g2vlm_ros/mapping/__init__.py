"""One continuous world from G2VLM windows (ROS-free): chaining, a keyframe pose graph, a map cloud, outputs.

Each window of model output lives in its own frame and unit. `world_map.WorldMap` ties consecutive windows
together on the keyframes they share (a robust similarity from their dense points, `alignment.py`, built in
`chaining.py`), keeps every keyframe as a node of a gtsam pose graph optimized incrementally
(`pose_graph.py`), and accumulates a memory-bounded, voxel-downsampled map cloud that follows the optimized
poses (`map_cloud.py`). Loop closure: candidates by descriptor and geometric verification (`loop_closure.py`),
kept and queued for the map by `map_loops.py`. From the map: a 2-D occupancy grid (`occupancy.py`) and
TUM/PLY/PCD files (`export.py`). `synthetic.py` makes windows with a known truth for tests; `benchmark.py`
measures the cost per window. Numpy and gtsam only: no ROS, no torch.
"""
