"""The app: :class:`Ivy`, which holds the settings and the registry and composes the backends,
the producer and the workers."""

from ivy.app.core import CHANNEL_PREFIX, MAX_BACKOFF_EXPONENT, Ivy

__all__ = ["CHANNEL_PREFIX", "MAX_BACKOFF_EXPONENT", "Ivy"]
