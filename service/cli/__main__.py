"""``python -m service.cli``: the same command line as the ``backbone-rank`` script (the tests run it this way)."""

from service.cli import app

if __name__ == "__main__":
    app()
