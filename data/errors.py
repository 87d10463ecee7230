"""The one exception type for problems a user can cause and fix."""


class UserError(Exception):
    """A problem with the user's input or environment, with what to do about it.

    The CLI prints ``str(error)`` on one line and exits non-zero, without a
    traceback. Raise it only where the message tells the user what to change.
    """
