"""Delivery: the webhook posts JSON from its own thread, retries with backoff, never blocks
the writer or the training loop, and drops (and counts) when its queue is full."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import trainspect as ts
from trainspect.alerts import AlertEngine, Webhook, alert_line
from trainspect.alerts.delivery import payload
from trainspect.errors import TrainspectError
from trainspect.records import Alert

ALERT = Alert(step=7, rule="loss_spike", level="warning", message="loss 9 at step 7",
              action="lower the LR", wall_time=123.0)


class Hook:
    """A local HTTP endpoint answering with `codes` in turn (then 200), after `delay_s`."""

    def __init__(self, codes=(), delay_s: float = 0.0) -> None:
        self.codes = list(codes)
        self.delay_s = delay_s
        self.bodies: list[dict] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(hook.delay_s)
                with hook.lock:
                    hook.times.append(time.monotonic())
                    hook.bodies.append(json.loads(body))
                    code = hook.codes.pop(0) if hook.codes else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory():
    hooks = []

    def make(**kwargs) -> Hook:
        hooks.append(Hook(**kwargs))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def test_webhook_posts_the_alert_as_json(hook_factory):
    hook = hook_factory()
    webhook = Webhook(hook.url, run={"id": "r1", "project": "p", "name": "n"})
    assert webhook.send(ALERT)
    assert webhook.close(timeout=5)
    assert hook.bodies == [{
        "text": "trainspect [warning] step 7 loss_spike: loss 9 at step 7 -> lower the LR",
        "run": {"id": "r1", "project": "p", "name": "n"}, "step": 7, "rule": "loss_spike",
        "level": "warning", "state": "fired", "message": "loss 9 at step 7",
        "action": "lower the LR", "wall_time": 123.0}]
    assert hook.bodies[0] == payload(ALERT, {"id": "r1", "project": "p", "name": "n"})
    assert (webhook.sent, webhook.failed, webhook.dropped) == (1, 0, 0)


def test_webhook_retries_a_failing_server_with_backoff(hook_factory):
    hook = hook_factory(codes=[500, 503])  # fails twice, then succeeds
    webhook = Webhook(hook.url, backoff_s=0.05)
    webhook.send(ALERT)
    assert webhook.close(timeout=5)
    assert len(hook.bodies) == 3 and hook.bodies[0] == hook.bodies[2]
    gaps = [b - a for a, b in zip(hook.times, hook.times[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # 0.05 then 0.1: exponential
    assert (webhook.sent, webhook.failed) == (1, 0)


def test_webhook_does_not_retry_a_client_error_and_gives_up_after_retries(hook_factory, caplog):
    hook = hook_factory(codes=[400])
    webhook = Webhook(hook.url, backoff_s=0.01)
    webhook.send(ALERT)
    webhook.close(timeout=5)
    assert len(hook.bodies) == 1 and (webhook.sent, webhook.failed) == (0, 1)

    down = hook_factory(codes=[500] * 10)
    webhook = Webhook(down.url, backoff_s=0.01, retries=2)
    webhook.send(ALERT)
    webhook.close(timeout=5)
    assert len(down.bodies) == 3 and (webhook.sent, webhook.failed) == (0, 1)
    assert "could not deliver alert loss_spike (step 7)" in caplog.text


def test_send_never_blocks_and_a_full_queue_drops_and_counts(hook_factory):
    hook = hook_factory(delay_s=0.5)
    webhook = Webhook(hook.url, max_queue=2)
    started = time.perf_counter()
    results = [webhook.send(ALERT) for _ in range(6)]
    assert time.perf_counter() - started < 0.05  # six sends against a 0.5 s server
    # one is being posted or queued, two fit the queue; the rest are dropped and counted
    assert results.count(False) == webhook.dropped >= 3
    webhook.close(timeout=0.1)


def test_an_unreachable_webhook_costs_nothing_but_a_warning(caplog):
    webhook = Webhook("http://127.0.0.1:9/nothing-listens", backoff_s=0.01, retries=1,
                      timeout_s=1)
    webhook.send(ALERT)
    webhook.close(timeout=5)
    assert (webhook.sent, webhook.failed) == (0, 1)
    assert "could not deliver" in caplog.text


def test_bad_webhook_url_is_one_clear_error():
    with pytest.raises(TrainspectError, match="`webhook`.*'slack'"):
        Webhook("slack")
    with pytest.raises(TrainspectError, match="`webhook`"):
        AlertEngine([], webhook="ftp://example.com/x")


def test_engine_posts_its_alerts_and_the_runs_own_without_blocking_training(hook_factory, runs):
    hook = hook_factory(delay_s=0.3)  # a slow endpoint
    with ts.init(project="p", alerts=False) as run:
        engine = AlertEngine(config=run.config, webhook=hook.url, console=False,
                             run={"id": run.id, "project": "p", "name": run.name})
        run.add_observer(engine.observe)
        run.alert("user note", level="info", step=0)
        started = time.perf_counter()
        for step in range(40):
            run.log({"loss": 1.0 if step != 30 else float("nan")}, step=step)
        assert run.flush()
        assert time.perf_counter() - started < 0.3  # the 0.3 s POSTs are not waited for
    engine.close(timeout=5)
    rules = [(b["rule"], b["state"]) for b in hook.bodies]
    assert rules == [("user", "fired"), ("nonfinite:loss", "fired"),
                     ("nonfinite:loss", "cleared")]
    assert all(b["run"]["id"] == run.id for b in hook.bodies)


def test_alert_line_is_one_readable_line():
    assert alert_line(ALERT) == ("trainspect [warning] step 7 loss_spike: loss 9 at step 7 "
                                 "-> lower the LR")
    cleared = Alert(step=9, rule="loss_spike", level="warning", message="spikes stopped",
                    state="cleared")
    assert alert_line(cleared) == "trainspect [cleared] step 9 loss_spike: spikes stopped"
