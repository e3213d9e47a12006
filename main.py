"""`python main.py train|search|report|reproduce ...`: the command line of vitsearch/cli.py (installed as
the `vitsearch` command too)."""

from vitsearch.cli import run

if __name__ == "__main__":  # not in a process started by spawn or forkserver, which imports this file again
    run()
