"""``python -m txportend``: the command line, see :mod:`txportend.cli`."""

from txportend.cli import main

if __name__ == "__main__":
    main()
