"""The web dashboard (``ivy dashboard``, extra ``ivy-queue[dashboard]``): queues with their
depth and dead letters (requeue, purge), the workers alive, a live chart of completed and
failed tasks per second, recent failures with tracebacks, and calls looked up by id.

Built on ivy's public pieces: ``app.dead_letters`` / ``requeue_dead`` / ``purge_dead``, the
queue backend's ``size`` and ``queues``, and the notifier's ``workers``,
``subscribe_events`` and ``stored``. Modules:

* :mod:`~ivy.dashboard.collector`: per-second counts and failures from the events stream;
* :mod:`~ivy.dashboard.state`: what the pages show, read from the backends;
* :mod:`~ivy.dashboard.security`: token, CSRF token, loopback-only binding;
* :mod:`~ivy.dashboard.routes` and :mod:`~ivy.dashboard.web`: the Starlette app
  (:func:`~ivy.dashboard.web.create_app`);
* :mod:`~ivy.dashboard.server`: uvicorn, in the foreground or on a thread;
* :mod:`~ivy.dashboard.command`: the ``ivy dashboard`` command line.

Importing this package imports none of Starlette, Jinja2 or uvicorn; its modules do.
"""
