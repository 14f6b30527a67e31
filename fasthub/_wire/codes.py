"""Wire constants of RFC 6455: opcodes, close codes and connection states.

Plain module ints (not enums) for opcodes and states, so the hot path compares C ints once
compiled; ``CloseCode`` is an ``IntEnum`` because it is mostly shown to people and logs.
"""

from __future__ import annotations

from enum import IntEnum

# 5.2. Base Framing Protocol: "Opcode: 4 bits. Defines the interpretation of the Payload data."
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: opcodes that RFC 6455 defines; every other one is "reserved for further" frames
DATA_OPCODES = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})

# Connection states (4.1, 7.1.3, 7.1.4). CONNECTING belongs to the HTTP layer, not to _wire.
OPEN = 1
CLOSING = 2
CLOSED = 3


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 7.4.1 and the IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


#: codes a peer may put in a close frame (7.4.1 and 7.4.2); 3000-4999 are also allowed
WIRE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
