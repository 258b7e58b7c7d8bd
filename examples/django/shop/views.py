"""The views: one enqueues a task, one reads its result (from any process)."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.tasks import send_receipt

try:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks import default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist


@csrf_exempt
@require_POST
def send_receipt_view(request: HttpRequest, order_id: int) -> JsonResponse:
    """Enqueue the receipt of ``order_id``; the result id comes back at once (the call is
    sent when the transaction commits: ENQUEUE_ON_COMMIT)."""
    with transaction.atomic():
        # ... save the order here ...
        result = send_receipt.enqueue(order_id)
    return JsonResponse({"result_id": result.id}, status=202)


@require_GET
def result_view(request: HttpRequest, result_id: str) -> JsonResponse:
    """The status of a result and, once it succeeded, its value."""
    try:
        result = default_task_backend.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such result"}, status=404)
    body = {"status": str(result.status), "attempts": result.attempts,
            "errors": [e.exception_class_path for e in result.errors]}
    if result.status == "SUCCESSFUL":
        body["return_value"] = result.return_value
    return JsonResponse(body)
