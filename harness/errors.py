"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class HarnessError(Exception):
    """A user-facing error: the message is one line that names the file, key or value at fault."""
