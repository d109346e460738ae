"""A training process started by a launcher (``accelerate launch``, ``torchrun``) dies with it.

The launcher (torch's elastic agent, inside ``accelerate launch``) starts one worker process per rank
and watches them. Kill the launcher alone -- ``kill -9`` on its pid, an OOM killer, a scheduler that
signals one pid -- and the workers are orphaned: they are re-parented to init and train on, talking to
each other over their own process group, writing checkpoints and holding the output directory's lock
and the GPUs, with no one to stop them and no terminal that shows them. A SIGTERM or Ctrl-C reaches
them through the launcher; a SIGKILL of the launcher does not, since it gets no chance to pass it on.

Linux can tie a process to its parent: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` makes the kernel send the
process SIGTERM when its parent dies, whatever killed the parent. Each worker asks for it as it starts
(`die_with_launcher`, called at the top of recipes/train.py); SIGTERM then ends the worker like any
unhandled SIGTERM (no Python cleanup runs: the run lock it may hold is stale, and the next run takes
it over: hfmtl/training/run_lock.py). Elsewhere (macOS, Windows) there is no such call: nothing is done.

The kernel means the parent *thread*: the signal comes when the thread that started the worker exits.
torch's elastic agent starts its workers from its main thread, which lives as long as the launcher.

Example:
    >>> die_with_launcher({})  # not under a launcher: nothing to do
    False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Mapping

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# what accelerate launch and torchrun set in each worker's environment
_LAUNCHER_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE")


def die_with_launcher(environ: Mapping[str, str] = os.environ) -> bool:
    """Have the kernel send this process SIGTERM when its parent (the launcher) dies, when it runs under a
    launcher on Linux; returns whether it did.

    A launcher that died before this call cannot signal any more: the process is then already orphaned
    (its parent is init, pid 1) and ends itself the same way.
    """
    if not sys.platform.startswith("linux") or not all(name in environ for name in _LAUNCHER_VARIABLES):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return True
