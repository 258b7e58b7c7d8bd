"""Workflows: chains, groups and chords of task signatures (``ivy.chain``, ``ivy.group``,
``ivy.chord``, ``Task.s``, ``ivy.signature``).

* :mod:`ivy.workflows.canvas`: the objects users build;
* :mod:`ivy.workflows.nodes`: their wire form and which messages start a node;
* :mod:`ivy.producer.workflows`: the producer's side;
* :mod:`ivy.worker.continuation`: the worker's side (results passed on, groups joined in
  the notifier's store, the final result).
"""

from __future__ import annotations

from ivy.workflows.canvas import Canvas, Chain, Group, Signature, chain, chord, group, signature

__all__ = ["Canvas", "Chain", "Group", "Signature", "chain", "chord", "group", "signature"]
