"""`python -m vitsearch train|search|report|reproduce ...`: the same command line as `python main.py`."""

from vitsearch.cli import run

if __name__ == "__main__":  # not in a process started by spawn or forkserver, which imports this file again
    run()
