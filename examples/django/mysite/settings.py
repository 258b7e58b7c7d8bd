"""Settings of the example project: Django's tasks run on ivy.

The queue and the notifier are the SQLite file ``ivy.db`` beside this project unless
``IVY_QUEUE_URL`` / ``IVY_NOTIFIER_URL`` name others (``redis://...`` in production)."""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
IVY_DB = f"sqlite:///{BASE_DIR / 'ivy.db'}"

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
ROOT_URLCONF = "mysite.urls"

INSTALLED_APPS = [
    # Django 4.2-5.x take the tasks framework from the django-tasks backport; Django 6 has it
    *(["django_tasks"] if django.VERSION < (6,) else []),
    "ivy.contrib.django",  # python manage.py ivy_worker
    "shop",
]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": BASE_DIR / "db.sqlite3"}}

TASKS = {
    "default": {
        "BACKEND": "ivy.contrib.django.IvyBackend",
        "QUEUES": ["default", "emails"],
        # send when the view's transaction commits: a rolled-back order sends nothing
        "ENQUEUE_ON_COMMIT": True,
        "OPTIONS": {
            "queue_url": os.environ.get("IVY_QUEUE_URL", IVY_DB),
            "notifier_url": os.environ.get("IVY_NOTIFIER_URL", IVY_DB),
            "max_retries": 2,
        },
    },
}
