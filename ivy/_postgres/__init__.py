"""What PostgreSQL backends share: URL options and the connection pool (:mod:`.connection`),
versioned migrations (:mod:`.schema`), the queue's statements (:mod:`.queries`),
``LISTEN`` threads and the queue's wake-ups (:mod:`.wake`), and the notifier's statements
(:mod:`.store`) and subscriptions (:mod:`.inbox`). Needs ``pip install 'ivy-queue[postgres]'``."""
