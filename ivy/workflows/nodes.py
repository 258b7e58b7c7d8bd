"""Starting workflow nodes: which messages to send for a node, given the result that flows into
it and what follows it; pure functions over the JSON forms of PROTOCOL.md, "Workflows"."""

from __future__ import annotations

from typing import Any

from ivy.message import NONCE, Message, nonce_of, now_ms

Node = dict[str, Any]
Cont = dict[str, Any]

#: The end of a workflow: the result is the final result.
FINAL: Cont = {"next": [], "join": None}


def start(node: Node, prefix: list[Any], cont: Cont, flow: dict[str, Any], *,
          eta: int | None = None) -> list[Message]:
    """The messages that start ``node``: its task's, or its first step's, or each group
    member's. ``prefix`` goes before the task's own arguments (the previous result);
    ``flow`` holds the workflow's ``id`` and ``reply_to`` (and its call's ``nonce``, which
    every step carries on to the final notification)."""
    if "task" in node:
        workflow = {"id": flow["id"], "reply_to": flow.get("reply_to"),
                    "next": cont["next"], "join": cont["join"]}
        nonce = nonce_of(flow)
        if nonce is not None:
            workflow[NONCE] = nonce
        return [Message(
            id=node["id"], name=node["task"], args=[*prefix, *node.get("args", [])],
            kwargs=dict(node.get("kwargs") or {}), queue=node["queue"], reply_to=None,
            max_retries=int(node.get("max_retries", 0)), priority=int(node.get("priority", 0)),
            eta=eta, created_ms=now_ms(), extra={"workflow": workflow})]
    if "chain" in node:
        steps = node["chain"]
        rest = {"next": [*steps[1:], *cont["next"]], "join": cont["join"]}
        return start(steps[0], prefix, rest, flow, eta=eta)
    members = node["group"]
    messages: list[Message] = []
    for index, member in enumerate(members):
        join = {"group": node["id"], "index": index, "size": len(members),
                "next": cont["next"], "join": cont["join"]}
        messages.extend(start(member, prefix, {"next": [], "join": join}, flow, eta=eta))
    return messages


def describe(cont: Cont) -> str:
    """What comes next, for log lines."""
    if cont["next"]:
        first = cont["next"][0]
        return str(first.get("task") or ("group" if "group" in first else "chain"))
    if cont["join"] is not None:
        return f"group {cont['join']['group']}"
    return "final result"
