"""What the RabbitMQ queue backend and notifier share, below both: the connection link with
its reconnects (:mod:`.link`), queue declarations (:mod:`.topology`), and the fenced patches
of pika internals (:mod:`._pika_patches`)."""
