"""The example's tests: ``python manage.py test shop``. Each test runs an ivy worker in this
process, on a memory broker of its own."""

import time
import uuid
from typing import Any

from django.test import TestCase, override_settings

from shop import tasks

try:
    from django.tasks import default_task_backend, task_backends
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:
    from django_tasks import default_task_backend, task_backends
    from django_tasks.signals import task_enqueued, task_finished, task_started


class ShopTasksTests(TestCase):
    """The views and tasks, with a worker."""

    def setUp(self) -> None:
        url = f"memory://shop-{uuid.uuid4().hex[:8]}"
        tasks_setting = {"default": {
            "BACKEND": "ivy.contrib.django.IvyBackend", "QUEUES": ["default", "emails"],
            "ENQUEUE_ON_COMMIT": True,
            "OPTIONS": {"queue_url": url, "notifier_url": url, "max_retries": 2,
                        "ivy": {"retry_base_delay": 0.01}}}}
        overridden = override_settings(TASKS=tasks_setting)
        overridden.enable()
        self.addCleanup(overridden.disable)
        backend = task_backends["default"]
        self.addCleanup(backend.close)
        worker = backend.app.listen(queue=["default", "emails"], block=False, heartbeat=None)
        self.addCleanup(worker.stop)

    def finished(self, result_id: str, timeout: float = 15.0) -> Any:
        """The result once it is final (read as any process would)."""
        deadline = time.monotonic() + timeout
        while True:
            result = default_task_backend.get_result(result_id)
            if result.is_finished:
                return result
            self.assertLess(time.monotonic(), deadline, f"result {result_id} did not finish")
            time.sleep(0.01)  # poll

    def test_the_view_enqueues_on_commit_and_the_worker_runs_it(self) -> None:
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            response = self.client.post("/orders/7/receipt")
        self.assertEqual(response.status_code, 202)
        self.assertEqual(len(callbacks), 1)  # the send waited for the commit
        result_id = response.json()["result_id"]
        self.finished(result_id)
        body = self.client.get(f"/results/{result_id}").json()
        self.assertEqual(body, {"status": "SUCCESSFUL", "attempts": 1, "errors": [],
                                "return_value": "receipt for order 7"})

    def test_a_rolled_back_transaction_sends_nothing(self) -> None:
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            result = tasks.send_receipt.enqueue(8)
        self.assertEqual(len(callbacks), 1)  # not run: as if the transaction rolled back
        self.assertEqual(self.client.get(f"/results/{result.id}").status_code, 404)

    def test_a_failure_is_retried_and_reported(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            result = tasks.send_receipt.enqueue(-1)
        done = self.finished(result.id)
        self.assertEqual(str(done.status), "FAILED")
        self.assertEqual([e.exception_class_path for e in done.errors],
                         ["builtins.ValueError"] * 3)
        self.assertIn("no order -1", done.errors[-1].traceback)

    def test_context_attempt_async_tasks_and_run_after(self) -> None:
        from django.utils import timezone

        later = timezone.now() + timezone.timedelta(milliseconds=300)
        with self.captureOnCommitCallbacks(execute=True):
            first = tasks.attempts.enqueue()
            summed = tasks.total.enqueue([1.5, 2.5])
            deferred = tasks.send_receipt.using(run_after=later, priority=-20).enqueue(9)
        self.assertEqual(self.finished(first.id).return_value, 1)
        self.assertEqual(self.finished(summed.id).return_value, 4.0)
        done = self.finished(deferred.id)
        self.assertGreaterEqual(done.started_at, later)
        self.assertEqual(done.task.priority, -20)

    def test_the_signals_fire(self) -> None:
        seen = []

        def receiver(name: str) -> Any:
            def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
                seen.append((name, str(task_result.status)))
            return receive

        receivers = [receiver(name) for name in ("enqueued", "started", "finished")]
        for signal, receive in zip((task_enqueued, task_started, task_finished), receivers,
                                   strict=True):
            signal.connect(receive)
            self.addCleanup(signal.disconnect, receive)
        with self.captureOnCommitCallbacks(execute=True):
            result = tasks.send_receipt.enqueue(3)
        self.finished(result.id)
        self.assertEqual(seen, [("enqueued", "READY"), ("started", "RUNNING"),
                                ("finished", "SUCCESSFUL")])
