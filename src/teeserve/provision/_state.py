"""States and transitions of a secret-provisioning session: the only place they are defined.

Rule 1: everything that changes the session state lives in this file.
Rule 2: this file does not know which side we are; it only knows who sent an event.

The conversation (gramine-formats.md §2.3) is strictly sequential, so one state describes both sides:

    IDLE ─client SecretRequest─▶ REQUESTED ─server SecretResponse─▶ PROVISIONED ⟲ Data (either side)
    IDLE / REQUESTED / PROVISIONED ─ConnectionClosed (either side)─▶ CLOSED
    any exception in the state machine ──▶ ERROR (sticky)
"""

from __future__ import annotations

import enum

from ._events import ConnectionClosed, Data, Event, SecretRequest, SecretResponse

__all__ = ["Role", "State", "TRANSITIONS", "READING", "transition"]


class Role(enum.Enum):
    CLIENT = "client"  # the enclave (attester)
    SERVER = "server"  # the verifier (secret-provisioning server / key broker)


class State(enum.Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    PROVISIONED = "provisioned"
    CLOSED = "closed"
    ERROR = "error"


_C, _S = Role.CLIENT, Role.SERVER

#: (state, sender, event type) → next state. Anything missing is a protocol error.
TRANSITIONS: dict[tuple[State, Role, type[Event]], State] = {
    (State.IDLE, _C, SecretRequest): State.REQUESTED,
    (State.REQUESTED, _S, SecretResponse): State.PROVISIONED,
    (State.PROVISIONED, _C, Data): State.PROVISIONED,
    (State.PROVISIONED, _S, Data): State.PROVISIONED,
}
for _state in (State.IDLE, State.REQUESTED, State.PROVISIONED):
    for _role in (_C, _S):
        TRANSITIONS[(_state, _role, ConnectionClosed)] = State.CLOSED

#: Which message the *sender* may be in the middle of sending in a state (what the receiver parses).
READING: dict[tuple[State, Role], type[Event]] = {
    (State.IDLE, _C): SecretRequest,
    (State.REQUESTED, _S): SecretResponse,
    (State.PROVISIONED, _C): Data,
    (State.PROVISIONED, _S): Data,
}


def transition(state: State, sender: Role, event: Event) -> State | None:
    """The next state, or None if ``sender`` may not send ``event`` in ``state``."""
    return TRANSITIONS.get((state, sender, type(event)))
