"""A node's replies to failures: a short code and a message written by its own code, never raw exception text.

Flower puts an exception's text into the error reply; an arbitrary exception's text can hold the node's paths,
environment or data, so every ClientApp handler is :func:`guarded` and only a :class:`NodeError`'s text leaves it.
"""

from __future__ import annotations

import functools
import logging

from flwr.app import Context, Message

from qkt_flower.errors import ConfigError, DataError
from qkt_flower.fl.node import LimitError

log = logging.getLogger(__name__)


class NodeError(RuntimeError):
    """A node's refusal or failure as the server is told it: a short code and a message written here.

    Flower puts an exception's text into the error reply; an arbitrary exception's text can hold the node's paths,
    environment or data, so every handler is :func:`guarded` and only this text leaves the node.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")

    def __reduce__(self):
        return (NodeError, (self.code, self.message))


def guarded(handler):
    """``handler`` with every failure logged in full on the node and replied as a :class:`NodeError`."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context, *args) -> Message:
        try:
            return handler(msg, context, *args)
        except NodeError:
            raise
        except LimitError as err:  # the message's own values against the node's limits
            log.error("%s: %s", handler.__name__, err)
            raise NodeError("limit", str(err)) from None
        except ConfigError as err:  # the key and what is allowed: both come from this code, not from the node
            log.error("%s: %s", handler.__name__, err)
            raise NodeError("config", f"{err.key} refused: {err.allowed}") from None
        except DataError as err:
            log.error("%s: %s", handler.__name__, err)
            raise NodeError("data", "this node's dataset files are missing or unreadable (see its log)") from None
        except Exception as err:
            log.exception("%s failed", handler.__name__)
            raise NodeError("internal", f"{type(err).__name__} in {handler.__name__} (see the node's log)") from None

    return wrapper
