"""The tasks of the example, registered on an ivy app of its own (``queue``): the web app
sends through it, and ``python -m fastapi_app.tasks`` runs a worker of it."""

from __future__ import annotations

import logging

import ivy

#: this example's ivy app: IVY_QUEUE_URL / IVY_NOTIFIER_URL, else the SQLite file ivy.db
queue = ivy.Ivy()


@queue.register_task(name="shop.send_receipt", queue="shop")
async def send_receipt(order_id: int, email: str) -> str:
    """Send the receipt of an order (here: log it). Enqueued; nobody waits for it."""
    logging.getLogger("shop").info("receipt of order %s sent to %s", order_id, email)
    return f"receipt {order_id} -> {email}"


@queue.register_task(name="shop.quote", queue="shop")
def quote(items: int, unit_price: int) -> int:
    """The price of ``items`` items, in cents, volume discount included. Awaited."""
    discount = 10 if items >= 10 else 0
    return items * unit_price * (100 - discount) // 100


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    queue.listen(queue="shop")  # until Ctrl-C or SIGTERM
