"""User-facing errors.

Library code raises `FeddfError` for bad input (a missing file, an unknown name, a value out of range). The CLI turns
it into a one-line `click.ClickException` (exit 1, no traceback). The message must name the bad value and the fix.
"""


class FeddfError(Exception):
    """Bad input from the user: one line naming the bad value and how to fix it."""
