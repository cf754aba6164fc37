"""One trainer per run folder, and stop requests from SIGTERM / SIGINT."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ichseg.errors import UsageError
from ichseg.training.lock import RunLock
from ichseg.training.signals import StopRequest


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_second_holder_gets_a_usage_error_naming_the_first(tmp_path: Path):
    with RunLock(tmp_path) as first:
        holder = json.loads(first.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UsageError) as err:
            RunLock(tmp_path).acquire()
        assert str(err.value).startswith(
            f"run folder {tmp_path} is in use by PID {os.getpid()} on {socket.gethostname()} "
            f"since {holder['started']}")
        assert json.loads(first.path.read_text()) == holder  # the loser changed nothing
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):  # released: free to take again
        pass


def test_a_lock_held_by_another_process_keeps_us_out(tmp_path: Path):
    holder = spawn(f"""
        import time
        from ichseg.training.lock import RunLock
        with RunLock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"in use by PID {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_trainer_is_taken_over_with_a_warning(tmp_path, caplog):
    crashed = spawn(f"""
        import os, signal
        from ichseg.training.lock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    crashed.wait()
    assert crashed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == crashed.pid
    with caplog.at_level(logging.WARNING), RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"stale lock {tmp_path / '.lock'} of PID {crashed.pid}" in caplog.text


def test_a_lock_file_naming_a_process_that_is_gone_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / ".lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC"}))
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        pass
    assert f"of PID {pid} on {socket.gethostname()}" in caplog.text


def test_an_unlocked_lock_from_another_host_is_not_taken_over(tmp_path: Path):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "colab-vm-7", "started": "yesterday"}))
    with pytest.raises(UsageError, match=f"PID 4242 on host colab-vm-7 .* delete {lock}"):
        RunLock(tmp_path).acquire()
    assert json.loads(lock.read_text())["host"] == "colab-vm-7"


def test_without_flock_the_recorded_process_decides(tmp_path, monkeypatch, caplog):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with RunLock(tmp_path):  # a fresh lock needs no flock
        pass
    lock = tmp_path / ".lock"
    here = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": here, "started": "today"}))
    with pytest.raises(UsageError, match=f"in use by PID {os.getppid()} on {here}"):
        RunLock(tmp_path).acquire()
    pid = dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": here, "started": "today"}))
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"stale lock {lock} of PID {pid}" in caplog.text


def test_a_lock_file_removed_while_we_take_it_over_is_not_trusted(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    real_flock = fcntl.flock
    calls = []

    def released_meanwhile(fd, operation):
        if not calls:  # the old holder unlinks the file between our open and our flock
            lock.unlink()
        calls.append(fd)
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", released_meanwhile)
    with RunLock(tmp_path) as held:
        # the lock we hold is the file the path names now, not the unlinked one
        assert os.fstat(held._fd).st_ino == os.stat(lock).st_ino
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(calls) == 2


def test_sigterm_sets_the_flag_and_the_loop_exits_0_at_a_step_boundary():
    child = spawn("""
        import sys, time
        from ichseg.training.signals import StopRequest
        with StopRequest() as stop:
            step = 0
            print("running", flush=True)
            while not stop.requested:
                # one "step": the flag is only read between steps, never inside one
                time.sleep(0.01)
                step += 1
            print(f"stopped after step {step} by {stop.reason}", flush=True)
        sys.exit(0)
    """)
    assert child.stdout.readline().strip() == "running"
    os.kill(child.pid, signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip().startswith("stopped after step") and out.strip().endswith("by SIGTERM")


def test_a_second_sigint_raises_keyboard_interrupt_and_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest() as stop:
        assert stop.installed
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.reason == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_stop_requested_by_code_keeps_its_first_reason():
    with StopRequest() as stop:
        stop.request("time limit")
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.reason == "time limit"


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def worker():
        with StopRequest() as stop:
            seen["installed"] = stop.installed
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["installed"] is False
    assert seen["handler"] == signal.getsignal(signal.SIGTERM)
