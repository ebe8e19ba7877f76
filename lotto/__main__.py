"""`python -m lotto ...`: the CLI, also as a module (`torchrun ... -m lotto ...`)."""

from lotto.cli.app import main

if __name__ == "__main__":
    main()
