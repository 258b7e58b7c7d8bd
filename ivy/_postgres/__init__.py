"""What the PostgreSQL backends share: connections, migrations, statements, ``LISTEN`` threads
(``pip install 'ivy-queue[postgres]'``). How it works: docs/internals/postgres.md."""
