"""Long-lived child interpreters that run one job at a time: a generic pool, with no knowledge of its jobs.

Some libraries are unsafe to run several times at once in one process (img2dataset: two of its downloaders on
threads of one process were seen to lose the process's own output), and a shard's deadline is only enforceable
by killing a process. So such a shard runs in a child Python process, as img2dataset's own distributor does.
Children are reused from job to job of the same handler (importing img2dataset costs seconds), one job at a time
each, and exit when their parent closes their stdin. A child that dies mid-job is reported as
:class:`WorkerDied` (the caller's rerun redoes the shard).

Protocol: the parent writes one JSON line ``{"handler": "module:function", "job": path, "log": path}`` to the
child's stdin; the child imports the handler (once), runs ``handler(Path(job))`` with its stdout/stderr sent
to the log file and answers ``{"ok": bool}``.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

STARTUP_SECONDS = 300.0  # importing a handler (img2dataset, torch) before the job's own deadline starts


class WorkerDied(RuntimeError):
    """The child process exited before answering (killed, out of memory, crashed)."""


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.core.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: select() must see every answer byte the child wrote (see _answer)
        )
        self.unread = b""  # answer bytes read from the pipe and not yet returned

    def run(self, handler: str, job: Path, log: Path, timeout: float | None = None) -> bool:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps({"handler": handler, "job": str(job), "log": str(log)}) + "\n").encode())
            answer = self._answer(STARTUP_SECONDS, f"did not start {job} within {STARTUP_SECONDS} s", job, log)
            if "started" in answer:  # (a handler that fails to import answers "ok": false at once)
                # A server that drips bytes defeats per-request timeouts: bound the whole job, after start-up.
                answer = self._answer(timeout, f"still busy after {timeout} s on {job}", job, log)
        except (BrokenPipeError, OSError) as err:
            raise WorkerDied(f"shard worker {self.proc.pid} is gone: {err}") from err
        return bool(answer["ok"])

    def _answer(self, timeout: float | None, overdue: str, job: Path, log: Path) -> dict:
        """The child's next protocol line; WorkerDied if it takes longer than ``timeout`` or the child exits.

        Read with select() + os.read on the raw pipe, never a buffered readline: when two answers arrive together
        (a job that ends as soon as it starts), a buffered reader would hold the second while select() waits for
        more bytes on an empty pipe.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.unread:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                self.kill()
                raise WorkerDied(f"shard worker {self.proc.pid} {overdue}; killed")
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait()
                raise WorkerDied(f"shard worker {self.proc.pid} exited with code {code} while running {job}; see {log}")
            self.unread += chunk
        line, _, self.unread = self.unread.partition(b"\n")
        return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()  # reap it: no zombie left behind

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_idle: dict[str, list[_Worker]] = {}  # handler -> idle children that imported it (a child serves one handler)
_lock = threading.Lock()


def run_in_worker(handler: str, job: Path, log: Path, timeout: float | None = None) -> bool:
    """Run ``handler`` (``"module:function"``, taking the job file's path) on one job in an idle child (started if
    none is idle); True when the handler returned a true value.

    ``timeout`` bounds the job from the moment the child has imported the handler and starts it (start-up has
    its own bound, :data:`STARTUP_SECONDS`): past it the child is killed and :class:`WorkerDied` raised.
    """
    with _lock:
        idle = _idle.setdefault(handler, [])
        worker = idle.pop() if idle else None
    if worker is None or worker.proc.poll() is not None:
        worker = _Worker()
    try:
        ok = worker.run(handler, job, log, timeout)
    except BaseException:
        worker.kill()
        raise
    with _lock:
        _idle[handler].append(worker)
    return ok


@atexit.register
def _close_all() -> None:
    with _lock:
        workers = [worker for idle in _idle.values() for worker in idle]
        _idle.clear()
    for worker in workers:
        worker.close()


def _import_handler(name: str) -> Callable[[Path], bool]:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def serve() -> None:
    """Child side: answer jobs from stdin until it closes; the job's output goes to its log file."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        with open(request["log"], "a") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                handler = _import_handler(request["handler"])
                protocol.write(json.dumps({"started": True}) + "\n")  # the job's deadline starts now
                ok = bool(handler(Path(request["job"])))
            except Exception:  # noqa: BLE001 - reported to the parent as a failed shard, traceback in the log
                import traceback

                traceback.print_exc()
                ok = False
            sys.stdout.flush()
            sys.stderr.flush()
        protocol.write(json.dumps({"ok": ok}) + "\n")


if __name__ == "__main__":
    serve()
