"""Django's tasks interface on ivy: ``TASKS = {"default": {"BACKEND":
"ivy.contrib.django.IvyBackend", ...}}`` and ``python manage.py ivy_worker`` (add
``"ivy.contrib.django"`` to ``INSTALLED_APPS``; with Django 4.2-5.x, ``"django_tasks"`` too).

Works with Django 6's ``django.tasks`` and with the ``django-tasks`` backport through one code
path (:mod:`ivy.contrib.django._compat`). See :mod:`ivy.contrib.django.backend` for the
settings and the guide ``docs/guides/django.md``."""

from __future__ import annotations

from .backend import IvyBackend, close_all, ivy_priority, override_urls

__all__ = ["IvyBackend", "close_all", "ivy_priority", "override_urls"]
