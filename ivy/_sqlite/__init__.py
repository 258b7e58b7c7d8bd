"""The SQLite file that the embedded queue and notifier share: the database and its
schema (:mod:`.database`), the one writer thread (:mod:`.writer`) and wake-ups between
processes (:mod:`.wake`)."""
