"""Integrations of ivy with the frameworks an application already uses: :mod:`ivy.contrib.asgi`
(Starlette, FastAPI) and :mod:`ivy.contrib.django` (Django's tasks). The top layer: nothing else
in ivy imports it."""
