"""`python main.py train|search|report|reproduce ...`: the command line of vitsearch/cli.py."""

import os
import sys

from vitsearch.cli import main


def run() -> None:
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", bool)():  # (a stop while Ray was imported: not yet)
        sys.exit(code)  # the normal exit, whose atexit hook stops the local Ray instance
    # Everything is written and closed, and no Ray instance is left: skip the interpreter's teardown of
    # torch and Ray's core worker (~1.6 s after a search).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # not in a process started by spawn or forkserver, which imports this file again
    run()
