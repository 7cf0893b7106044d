"""A worker process dies with its parent: on Linux, the kernel kills it.

Without this, a worker notices that the caller is gone only when it next
reads its pipe, and a call that spins or sleeps runs on, orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends.

    ``parent`` is the caller's pid, which started this process (fork, spawn),
    or 0 under forkserver, whose server started it. Elsewhere than Linux this
    does nothing.

    The caller may have died before the ``prctl``: then this process has
    been handed to another parent already, and exits now. The server cannot
    have died: it runs until every holder of its "alive" pipe is gone, and
    multiprocess hands this process one end. Closing that end afterwards lets
    the server exit with the caller, which then kills this process. Workers
    are daemonic and never start processes through the server themselves.

    The kernel tracks the *thread* that forked this process: under fork and
    spawn, the end of that thread in the caller kills it too.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        if ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no prctl in this C library
        return
    if parent:
        if os.getppid() != parent:
            os._exit(1)
        return
    from multiprocess import forkserver

    server = forkserver._forkserver
    with contextlib.suppress(AttributeError, OSError, TypeError):
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
