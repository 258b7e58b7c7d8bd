"""The producer side of ivy: :class:`Producer` sends calls and follows their confirms and
results."""

from ivy.producer.core import Producer
from ivy.producer.roles import Outgoing

__all__ = ["Outgoing", "Producer"]
