"""rosbag2 recordings (sqlite3 or MCAP), read without a ROS install through `rosbags` (PyPI).

A Recording lists a bag's topics, finds its camera streams (image topics and the CameraInfo
beside them) and yields its messages in recording order as deserialized objects, which can be
re-stamped and serialized back to CDR, ready for rclpy's `publish(bytes)`. Bags without embedded
message definitions (older sqlite3 bags) are read with the standard ROS 2 message definitions.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

BAG_SUFFIXES = (".mcap", ".db3")
IMAGE_TRANSPORTS = {"sensor_msgs/msg/Image": "raw", "sensor_msgs/msg/CompressedImage": "compressed"}
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
HEADER_TYPE = "std_msgs/msg/Header"


class BagError(RuntimeError):
    """The recording cannot be read (missing, corrupt, unknown storage or message types)."""


def is_bag(path: Path) -> bool:
    """A rosbag2 folder (metadata.yaml) or a single .mcap / .db3 storage file."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix.lower() in BAG_SUFFIXES


@dataclass(frozen=True)
class BagTopic:
    name: str
    msgtype: str  # e.g. sensor_msgs/msg/Image
    count: int


@dataclass(frozen=True)
class CameraStream:
    """An image topic of the bag, how it is transported, and its CameraInfo topic ("" if none)."""

    image_topic: str
    transport: str  # raw | compressed
    camera_info_topic: str


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int  # when it was recorded (the bag's clock), which paces playback
    message: Any  # rosbags message object (a mutable dataclass)


def camera_info_beside(image_topic: str, info_topics: Sequence[str]) -> str:
    """The CameraInfo topic of an image topic by the image_transport convention: same namespace
    (/cam/image_raw, /cam/image_raw/compressed, /cam/color/image -> /cam/camera_info, /cam/color/camera_info)."""
    parts = image_topic.rstrip("/").split("/")
    if parts[-1] == "compressed":
        parts = parts[:-1]
    for depth in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:depth]) + "/camera_info"
        if candidate in info_topics:
            return candidate
    return ""


def shift_header_stamps(message: Any, offset_ns: int) -> None:
    """Adds `offset_ns` to every header stamp inside `message` (nested messages and arrays of them,
    e.g. each transform of a TFMessage). Zero stamps stay zero: they mean "no time" (static data)."""
    if getattr(message, "__msgtype__", None) == HEADER_TYPE:
        stamp = message.stamp
        total = stamp.sec * 1_000_000_000 + stamp.nanosec
        if total != 0:
            total = max(0, total + offset_ns)
            message.stamp = type(stamp)(sec=total // 1_000_000_000, nanosec=total % 1_000_000_000)
        return
    if not dataclasses.is_dataclass(message):
        return
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, list):
            for item in value:
                shift_header_stamps(item, offset_ns)
        elif dataclasses.is_dataclass(value):
            shift_header_stamps(value, offset_ns)


class Recording:
    """An open rosbag2 recording; use as a context manager or call close()."""

    def __init__(self, path: Path, topics: Optional[Sequence[str]] = None):
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if not is_bag(self.path):
            raise BagError(f"{path} is not a rosbag2 folder (with metadata.yaml) or a .mcap/.db3 file")
        try:
            self._reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self._reader.open()
        except Exception as error:  # rosbags raises its own error types, sqlite and mcap theirs
            raise BagError(f"cannot read {path}: {error}") from error
        known = {c.topic for c in self._reader.connections}
        missing = sorted(set(topics or ()) - known)
        if missing:
            self.close()
            raise BagError(f"{path} has no topic {', '.join(missing)}; it has {', '.join(sorted(known))}")
        self._connections = [c for c in self._reader.connections if not topics or c.topic in topics]

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    @property
    def start_time_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def duration_s(self) -> float:
        return self._reader.duration / 1e9

    def topics(self) -> list[BagTopic]:
        counts: dict[tuple[str, str], int] = {}
        for connection in self._connections:
            key = (connection.topic, connection.msgtype)
            counts[key] = counts.get(key, 0) + connection.msgcount
        return [BagTopic(name, msgtype, count) for (name, msgtype), count in sorted(counts.items())]

    def camera_streams(self) -> list[CameraStream]:
        topics = self.topics()
        info_topics = [t.name for t in topics if t.msgtype == CAMERA_INFO_TYPE]
        return [CameraStream(t.name, IMAGE_TRANSPORTS[t.msgtype], camera_info_beside(t.name, info_topics))
                for t in topics if t.msgtype in IMAGE_TRANSPORTS]

    def messages(self) -> Iterator[BagMessage]:
        """The selected topics' messages in recording order."""
        try:
            for connection, log_time, raw in self._reader.messages(connections=self._connections):
                yield BagMessage(connection.topic, connection.msgtype, int(log_time),
                                 self._reader.deserialize(raw, connection.msgtype))
        except Exception as error:  # a truncated chunk or an unknown type shows only while reading
            raise BagError(f"cannot read a message of {self.path}: {error}") from error

    def serialize(self, message: Any, msgtype: str) -> bytes:
        """CDR bytes of a (possibly modified) message, as rclpy's Publisher.publish(bytes) takes them."""
        return bytes(self._reader.typestore.serialize_cdr(message, msgtype))
