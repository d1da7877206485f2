"""``python -m sweep``: the ``sweep`` command (:func:`sweep.cli.main`, which calls
:func:`sweep.runtime.setup` first)."""

from sweep.cli import main

if __name__ == "__main__":
    main()
