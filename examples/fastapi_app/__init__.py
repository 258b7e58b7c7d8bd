"""A FastAPI app that sends ivy calls: one endpoint enqueues a task and answers at once, one
awaits a task's result. See docs/guides/asgi.md. From the ``examples`` folder::

    python -m fastapi_app.tasks                  # terminal 1: a worker
    uvicorn fastapi_app.main:web                 # terminal 2: the web app (pip install uvicorn)
    curl -X POST 'http://127.0.0.1:8000/orders?order_id=7&email=a@example.com'
    curl 'http://127.0.0.1:8000/quote?items=3&unit_price=250'

Both use the SQLite file ``ivy.db`` in the working directory unless ``IVY_QUEUE_URL`` and
``IVY_NOTIFIER_URL`` say otherwise.
"""
