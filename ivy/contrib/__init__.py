"""Integrations of ivy with the frameworks an application already uses: :mod:`ivy.contrib.asgi`
(Starlette, FastAPI) and :mod:`ivy.contrib.django` (Django's tasks). The top layer of the
package: it imports ivy, and nothing else in ivy imports it (an import-linter contract); each
integration's framework comes with an optional extra."""
