"""Run notifications for real: our Notifier (desktop-notifier over D-Bus) talks to a private session bus where a
small org.freedesktop.Notifications service, written here with dbus-fast, records each Notify call; the service
then emits ActionInvoked (the default action: a click on the notification) and our on_click gets the run."""

import importlib.util
import queue
import shutil
import subprocess
import threading

import pytest

from slm_core.run import runs
from studio.desktop.notify import Notifier, RunWatcher

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (apt-get install dbus)"),
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("desktop_notifier", "dbus_fast")),
                       reason="needs desktop-notifier (pip install -e '.[desktop]')"),
]
WAIT_S = 30  # an upper bound for a message on a loaded machine, never a timing assertion


class NotificationServer:
    """The fake notification daemon: its own thread and event loop, on the bus at `address`."""

    def __init__(self, address: str):
        import asyncio

        self.address, self.loop = address, asyncio.new_event_loop()
        self.calls: "queue.Queue[dict]" = queue.Queue()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        assert ready.wait(WAIT_S), "the fake notification service did not start"

    def _serve(self, ready: threading.Event) -> None:
        self.loop.run_until_complete(self._start())
        ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        from dbus_fast.aio import MessageBus

        self.bus = await MessageBus(bus_address=self.address).connect()
        self.service = _service(self.calls)
        self.bus.export("/org/freedesktop/Notifications", self.service)
        await self.bus.request_name("org.freedesktop.Notifications")

    def next_call(self) -> dict:
        return self.calls.get(timeout=WAIT_S)

    def click(self, notification_id: int) -> None:
        self.loop.call_soon_threadsafe(self.service.ActionInvoked, notification_id, "default")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.bus.disconnect)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _service(calls: "queue.Queue[dict]"):
    """org.freedesktop.Notifications as the spec has it (the methods and signals desktop-notifier uses)."""
    from typing import Annotated

    from dbus_fast.annotations import DBusDict, DBusInt32, DBusSignature, DBusStr, DBusUInt32
    from dbus_fast.service import ServiceInterface, method, signal

    Strings = Annotated[list[str], DBusSignature("as")]

    class Notifications(ServiceInterface):
        def __init__(self):
            super().__init__("org.freedesktop.Notifications")
            self.last_id = 0

        @method()
        def GetCapabilities(self) -> Strings:
            return ["body", "actions"]

        @method()
        def GetServerInformation(self) -> Annotated[tuple[str, str, str, str], DBusSignature("ssss")]:
            return ["fake-notifications", "slm-tests", "1.0", "1.2"]

        @method()
        def Notify(self, app_name: DBusStr, replaces_id: DBusUInt32, app_icon: DBusStr, summary: DBusStr,
                   body: DBusStr, actions: Strings, hints: DBusDict, expire_timeout: DBusInt32) -> DBusUInt32:
            self.last_id += 1
            calls.put({"id": self.last_id, "app": app_name, "title": summary, "body": body, "actions": actions})
            return self.last_id

        @method()
        def CloseNotification(self, notification_id: DBusUInt32) -> None:
            pass

        @signal()
        def ActionInvoked(self, notification_id, action_key) -> Annotated[tuple[int, str], DBusSignature("us")]:
            return [notification_id, action_key]

        @signal()
        def NotificationClosed(self, notification_id, reason) -> Annotated[tuple[int, int], DBusSignature("uu")]:
            return [notification_id, reason]

    return Notifications()


@pytest.fixture(scope="module")
def session_bus():
    """A private session bus (dbus-daemon) with the fake notification service on it; yields its address."""
    daemon = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = daemon.stdout.readline().strip()
        assert address.startswith("unix:"), "dbus-daemon printed no address"
        server = NotificationServer(address)
        yield address, server
        server.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=WAIT_S)


@pytest.fixture
def notifier(session_bus, monkeypatch):
    address, server = session_bus
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)  # desktop-notifier connects on its first send
    clicked: "queue.Queue[str]" = queue.Queue()
    sender = Notifier(clicked.put)
    yield sender, server, clicked
    # Sent after the test's own, on the same connection: a duplicate would arrive before it.
    sender.send("end of test", "", "-")
    assert server.next_call()["title"] == "end of test", "a notification nobody expected"
    sender.close()


def test_a_finished_run_notifies_once_and_its_click_names_the_run(tmp_path, notifier):
    sender, server, clicked = notifier
    run = tmp_path / "stories-1"
    run.mkdir()
    runs.write_status(run, state="running", step=10)
    sent = []  # the Notifier's futures: a click is only ours once the server's answer reached desktop-notifier
    watcher = RunWatcher(tmp_path, lambda *said: sent.append(sender.send(*said)))
    runs.write_status(run, state="finished", step=600)
    watcher.check()
    watcher.check()  # nothing changed: nothing more to say
    call = server.next_call()
    assert (call["app"], call["title"], call["body"]) == ("SLM Studio", "Run stories-1 finished", "Step 600.")
    assert "default" in call["actions"]  # a click on the notification is offered to us
    assert len(sent) == 1
    sent[0].result(timeout=WAIT_S)
    server.click(call["id"])
    assert clicked.get(timeout=WAIT_S) == "stories-1"


def test_started_from_the_queue_and_failed_notify_once_each(tmp_path, notifier):
    sender, server, _ = notifier
    old = tmp_path / "old"
    old.mkdir()
    runs.write_status(old, state="failed", error="ended before the app opened")
    watcher = RunWatcher(tmp_path, sender.send)
    queued = tmp_path / "next"
    queued.mkdir()
    runs.write_status(queued, state="queued")
    watcher.check()  # a run that joins the queue is no news yet
    runs.write_status(queued, state="running", pid=None)
    watcher.check()
    watcher.check()
    call = server.next_call()
    assert (call["title"], call["body"]) == ("Run next started", "It left the queue and is training.")
    runs.write_status(queued, state="failed", error="out of memory at step 3\nTraceback (most recent call last):")
    watcher.check()
    call = server.next_call()
    assert (call["title"], call["body"]) == ("Run next failed", "out of memory at step 3")
