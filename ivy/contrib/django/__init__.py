"""Django's tasks interface on ivy: ``"BACKEND": "ivy.contrib.django.IvyBackend"`` in ``TASKS`` and
``python manage.py ivy_worker``; see docs/guides/django.md."""

from __future__ import annotations

from .backend import IvyBackend, close_all, ivy_priority, override_urls

__all__ = ["IvyBackend", "close_all", "ivy_priority", "override_urls"]
