#!/usr/bin/env python3
"""Runs a command and writes "WALL USER SYS" seconds to a file, counting every
descendant: it is their subreaper, so a child orphaned inside the tree (AFL++'s
persistent-mode target, when its fork server is killed) is reaped here and its
CPU counted, which /usr/bin/time misses.

    reap.py OUT_FILE COMMAND...
"""
import ctypes
import os
import resource
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
out, cmd = sys.argv[1], sys.argv[2:]
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)
status = 0
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        break
    if p == pid:
        status = os.waitstatus_to_exitcode(st)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    f.write(f"{time.monotonic() - start:.2f} {ru.ru_utime:.2f} {ru.ru_stime:.2f}\n")
sys.exit(status if status >= 0 else 1)
