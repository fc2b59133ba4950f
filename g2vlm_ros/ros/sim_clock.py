"""Says clearly, once, when use_sim_time is true and no /clock arrives.

Without /clock a node on simulated time reads time zero: every stamp it makes is 0 and every ROS-time timer
waits forever, which looks like a silent hang. The node checks from a steady-clock timer and warns once.
"""
from __future__ import annotations

import time

SIM_CLOCK_WAIT_S = 5.0  # /clock normally arrives within a second of discovery


class SimClockWatch:
    def __init__(self, node, wait_s: float = SIM_CLOCK_WAIT_S):
        self._node = node
        self._wait_s = wait_s
        self._started = time.monotonic()
        self.warned = False
        self.problem = ""  # for diagnostics while /clock is missing

    def check(self) -> None:
        node = self._node
        if not node.get_parameter("use_sim_time").value:
            self.problem = ""
            return
        if node.get_clock().now().nanoseconds != 0:
            self.problem = ""
            return
        waited = time.monotonic() - self._started
        if waited < self._wait_s:
            return
        self.problem = (f"use_sim_time is true but no /clock message has arrived in {waited:.0f} s: the node's time "
                        "is zero. Start the simulator, or play bags with --clock, or set use_sim_time false")
        if not self.warned:
            self.warned = True
            node.get_logger().warning(self.problem)
