"""Who made the current request and its id, for the audit log and the servers' answers.

The front ends (REST middleware, gRPC handler wrapper) set both before the engine runs; the
engine's own callers in process leave them unset (caller None, a fresh request id).
"""

from __future__ import annotations

import contextvars
import os

# the API key's name that authenticated this request (None: auth off, or in process)
CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
# the request's id: the client's x-request-id when it sent one, else one made here
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

MAX_REQUEST_ID = 128  # a longer client id is refused (it lands in the audit log and headers)


def new_request_id() -> str:
    """A fresh request id (32 hex digits: 128 random bits; uuid4 costs five times more)."""
    return os.urandom(16).hex()


def current_request_id() -> str:
    """This request's id as the front end set it, else a fresh one (in process: one per call;
    it is not stored, so the caller's next call gets another)."""
    return REQUEST_ID.get() or new_request_id()


def current_caller() -> str | None:
    """The API key name of this request, or None."""
    return CALLER.get()
