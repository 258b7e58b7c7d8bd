"""The web dashboard (``ivy dashboard``, extra ``ivy-queue[dashboard]``), built on ivy's public
pieces. Importing this package imports none of Starlette, Jinja2 or uvicorn; its modules do."""
