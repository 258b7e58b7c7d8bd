"""Workflows: chains, groups and chords of task signatures (the canvas and its wire form); the
producer sends them (:mod:`ivy.producer.workflows`), workers continue them
(:mod:`ivy.worker.continuation`). See docs/internals/workflows.md."""

from __future__ import annotations

from ivy.workflows.canvas import Canvas, Chain, Group, Signature, chain, chord, group, signature

__all__ = ["Canvas", "Chain", "Group", "Signature", "chain", "chord", "group", "signature"]
