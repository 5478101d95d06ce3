"""This process's id without a system call: hot paths check it to notice a fork.

`os.getpid()` is a system call on every use (glibc no longer caches it). The value here
changes only in a forked child, where the at-fork hook sets it before any Python code
runs there; a process started afresh imports this module anew.
"""
from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current() -> int:
    """The id of the running process."""
    return _pid
