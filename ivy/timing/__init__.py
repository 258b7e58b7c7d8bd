"""Time and control of calls, with their shared state in the notifier's store (issue 12):
cancels (:mod:`.cancel`), unique sends (:mod:`.unique`), periodic tasks (:mod:`.schedule`,
:mod:`.scheduler`), rate limits (:mod:`.ratelimit`) and paused queues (:mod:`.pause`). The
worker asks :mod:`.gate` before it runs a message. Every process sharing a notifier (memory,
SQLite, Redis) sees the same state; the store operations are the notifiers' ``claim_key``,
``get_keys``, ``release_key`` and ``take_rate_slot``."""
