"""Queue backends: one module per backend, imported lazily by :mod:`ivy.config`."""
