"""`python -m corewarding.eval`: the command line of `cli.py`."""

from corewarding.eval.cli import main

if __name__ == "__main__":  # importing the module (the package's import check does) runs nothing
    main()
