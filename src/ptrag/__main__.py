"""``python -m ptrag ...``: the same as the ``ptrag`` command."""

from ptrag.cli import main

if __name__ == "__main__":
    main()
