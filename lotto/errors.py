"""The one error type for user mistakes: the CLI prints its message on one line and exits 2."""


class LottoError(Exception):
    """A user mistake (bad option, bad YAML, missing data, unknown device, corrupt checkpoint)."""
