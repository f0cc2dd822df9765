"""The sqlite sink's turnstile (collector/sinks/turns.py), with real processes: a
writer that just finished cannot take the write turn again ahead of a waiting one."""

from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path

from collector.sinks.turns import Turns, TurnTimeout

_FLOCK = "hhqqi4x"  # Linux struct flock: type, whence, start, len, pid (+ padding)


def _locked_by_other(fd: int, offset: int) -> bool:
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK


def test_a_waiting_writer_gets_the_next_turn(tmp_path: Path) -> None:
    path = str(tmp_path / "db-turns")
    order_r, order_w = os.pipe()
    mine = Turns(path, timeout=30)
    mine.__enter__()
    pid = os.fork()
    if pid == 0:  # the other worker: wait for a turn, note it, leave
        code = 1
        try:
            with Turns(path, timeout=30):
                os.write(order_w, b"other\n")
            code = 0
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 30
        while not _locked_by_other(mine._fd, 0):  # the other waits at the gate
            assert time.monotonic() < deadline, "the other process never reached the gate"
            time.sleep(0.01)
        mine.__exit__(None, None, None)
        with mine:  # finished, and at once wants the turn again
            os.write(order_w, b"mine\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.read(order_r, 100).split() == [b"other", b"mine"]
    finally:
        os.close(order_r)
        os.close(order_w)
        mine.close()


def test_a_turn_that_does_not_come_times_out(tmp_path: Path) -> None:
    path = str(tmp_path / "db-turns")
    gate_holder_ready_r, gate_holder_ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds the gate (as a waiter would) until told to go
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
        os.write(gate_holder_ready_w, b"x")
        os.read(release_r, 1)
        os._exit(0)
    try:
        os.read(gate_holder_ready_r, 1)
        turns = Turns(path, timeout=0.2)
        try:
            try:
                with turns:
                    raise AssertionError("took the turn past a held gate")
            except TurnTimeout as exc:
                assert "no write turn within 0.2 s" in str(exc)
        finally:
            turns.close()
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        for fd in (gate_holder_ready_r, gate_holder_ready_w, release_r, release_w):
            os.close(fd)
