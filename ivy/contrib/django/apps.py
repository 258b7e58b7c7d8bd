"""The Django app of ivy's tasks backend: it brings the ``ivy_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class IvyConfig(AppConfig):
    """``INSTALLED_APPS += ["ivy.contrib.django"]``: adds ``python manage.py ivy_worker``."""

    name = "ivy.contrib.django"
    label = "ivy_django"
    verbose_name = "ivy"
