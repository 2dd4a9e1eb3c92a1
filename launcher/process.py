"""Child processes that never outlive the launcher.

Each child gets its own session, so a Ctrl-C in the terminal reaches only the
launcher, which then stops the children in order (gateway first, Triton
last). The kernel's parent-death signal covers the case where the launcher
itself is killed: the child gets SIGTERM and no orphan is left.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(command: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """`pass_fds`: open descriptors the child inherits (the listening sockets of a gateway worker)."""
    return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                            pass_fds=pass_fds)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 40.0) -> int:
    """Signal the child's whole process group (SIGTERM, or SIGINT as a terminal's
    Ctrl-C would), SIGKILL it if it lingers.

    The group holds tritonserver's python backend stubs too.
    """
    if process.poll() is None:
        _signal_group(process, sig)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    # Stubs may still be exiting after their server: make sure none survive.
    _signal_group(process, signal.SIGKILL)
    return process.returncode


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (for tests and benchmarks)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until_live(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode} before it was live")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} was not live after {timeout_s:.0f} s")


class Supervised:
    """A child process started again whenever it dies, until `stop()`.

    Restarts back off from 1 s to 30 s while the child keeps dying, and reset
    once it has lived a minute. The watching thread also does the spawning, so
    the parent-death signal (tied to the spawning thread) holds for every child.
    """

    def __init__(self, command: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = (),
                 name: str | None = None, on_exit=None) -> None:
        """`on_exit(pid)`: called once a child that died is reaped, before it is started again."""
        self.command, self.env, self.pass_fds = command, env, pass_fds
        self.name = name or os.path.basename(command[0])
        self.on_exit = on_exit
        self.process = spawn(command, env, pass_fds)
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        delay, started = 1.0, time.monotonic()
        while not self._stopping.wait(0.5):
            if self.process.poll() is None:
                continue
            if time.monotonic() - started > 60:
                delay = 1.0
            log.warning("%s exited with code %s; starting it again in %.0f s",
                        self.name, self.process.returncode, delay)
            stop(self.process, grace_s=1)  # stubs left behind by a crashed server
            if self.on_exit is not None:
                self.on_exit(self.process.pid)
            if self._stopping.wait(delay):
                return
            self.process, started = spawn(self.command, self.env, self.pass_fds), time.monotonic()
            self.restarts += 1
            delay = min(delay * 2, 30.0)

    def stop(self) -> int:
        self._stopping.set()
        self._watcher.join()
        return stop(self.process)
