"""Builds the node's /diagnostics message (diagnostic_msgs/DiagnosticArray)."""
from __future__ import annotations

from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


@dataclass
class StatusBuilder:
    name: str
    hardware_id: str
    level: bytes = OK
    message: str = "ok"
    values: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: object) -> StatusBuilder:
        self.values[key] = f"{value:.3f}" if isinstance(value, float) else str(value)
        return self

    def set(self, level: bytes, message: str) -> StatusBuilder:
        """Raises the level (never lowers it) and keeps the message of the worst condition."""
        if level >= self.level:
            self.level, self.message = level, message
        return self

    def build(self) -> DiagnosticStatus:
        return DiagnosticStatus(
            level=self.level, name=self.name, message=self.message, hardware_id=self.hardware_id,
            values=[KeyValue(key=key, value=value) for key, value in self.values.items()],
        )


def diagnostic_array(stamp, statuses: list[StatusBuilder]) -> DiagnosticArray:
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status.build() for status in statuses]
    return array


def gpu_memory() -> dict[str, str]:
    """Memory of the current CUDA device as this process sees it; empty when CUDA is not in use.

    Only reads an already initialised CUDA context: diagnostics must not create one on CPU-only runs.
    """
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    free, total = torch.cuda.mem_get_info()
    mib = 1024 * 1024
    return {
        "gpu_memory_allocated_mib": f"{torch.cuda.memory_allocated() / mib:.0f}",
        "gpu_memory_reserved_mib": f"{torch.cuda.memory_reserved() / mib:.0f}",
        "gpu_memory_peak_mib": f"{torch.cuda.max_memory_allocated() / mib:.0f}",
        "gpu_memory_free_mib": f"{free / mib:.0f} of {total / mib:.0f}",
    }
