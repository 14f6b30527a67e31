"""Where a stream is, what a publish answers, what a recovery returns (plain dataclasses).

Kept apart from the compiled ``streams_c`` so that module and ``fasthub.streams`` share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream is: the offset of its last message (0: none yet) and its epoch."""

    offset: int
    epoch: str

    def as_dict(self) -> dict[str, object]:
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass(slots=True)
class Published:
    """What a stored publish returns (the ``ack``'s offset); ``duplicate``: an idempotency key
    seen before, so nothing was delivered and ``offset`` is the first publish's."""

    offset: int
    epoch: str
    duplicate: bool = False
    #: connections of this process that accepted it when it was delivered at once (else 0)
    delivered: int = 0


@dataclass(slots=True)
class Recovery:
    """The answer to "what came after ``since``": the messages, in offset order, and whether
    they are all of them (``recovered``). Not recovered: another epoch, a gap older than the
    history, or more than the recovery limit; ``payloads`` is then empty."""

    position: Position
    recovered: bool
    payloads: list[tuple[int, Any]]
    reason: str = ""
