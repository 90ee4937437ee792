"""`python -m corewarding.eval`: the command line of `cli.py`."""

from corewarding.eval.cli import main
from corewarding.startup import skip_unused_imports

if __name__ == "__main__":  # importing the module (the package's import check does) runs nothing
    skip_unused_imports()
    main()
