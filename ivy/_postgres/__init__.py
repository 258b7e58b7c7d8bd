"""What PostgreSQL backends share: URL options and the connection pool (:mod:`.connection`),
versioned migrations (:mod:`.schema`), the queue's statements (:mod:`.queries`) and
``LISTEN/NOTIFY`` wake-ups (:mod:`.wake`). Needs ``pip install 'ivy-queue[postgres]'``."""
