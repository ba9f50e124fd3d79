"""The telehub wire messages (package ``telehub.v1``), built at import time.

``telehub.desc`` beside this module is the compiled ``FileDescriptorSet`` of
``proto/telehub/v1/telehub.proto``, byte for byte what the hub's build writes
(``telehub::proto::FILE_DESCRIPTOR_SET``); the repository's CI checks that the two
are identical. Building the classes from it with ``google.protobuf.message_factory``
needs no ``protoc`` and no generated code, so the module works with every
``protobuf`` runtime from 4.25 on, whose generated code would otherwise be tied to
one ``protoc`` release.

The classes live in a private descriptor pool, so an application that compiles
``telehub.proto`` itself can import both without a clash.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["Envelope", "Reading", "Telemetry", "Notification", "Error", "Subscribe", "PROTOCOL"]

#: The WebSocket subprotocol of the binary (protobuf) wire format.
PROTOCOL = "telehub.v1"


def _load() -> dict[str, Any]:
    data = resources.files(__package__).joinpath("telehub.desc").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    classes: dict[str, Any] = message_factory.GetMessages(files, pool=descriptor_pool.DescriptorPool())
    return classes


_classes = _load()

Envelope: Any = _classes["telehub.v1.Envelope"]
Reading: Any = _classes["telehub.v1.Reading"]
Telemetry: Any = _classes["telehub.v1.Telemetry"]
Notification: Any = _classes["telehub.v1.Notification"]
Error: Any = _classes["telehub.v1.Error"]
Subscribe: Any = _classes["telehub.v1.Subscribe"]
