"""The shop's tasks: plain Django tasks, run by ``python manage.py ivy_worker``."""

from typing import Any

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 4.2-5.x
    from django_tasks import task


@task(queue_name="emails", priority=10)
def send_receipt(order_id: int) -> str:
    """Pretend to e-mail the receipt of an order; return what was sent."""
    if order_id < 0:
        raise ValueError(f"no order {order_id}")
    return f"receipt for order {order_id}"


@task(takes_context=True)
def attempts(context: Any) -> int:
    """Which attempt this is (1 on the first run)."""
    return int(context.attempt)


@task()
async def total(prices: list[float]) -> float:
    """An async task: the sum of ``prices``."""
    return sum(prices)
