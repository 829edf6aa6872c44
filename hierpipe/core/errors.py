"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HierpipeError(Exception):
    """Bad input or a failed step, with a message that names the culprit and what was expected."""
