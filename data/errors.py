"""The one exception type for problems a user can cause and fix, and the one for an unusable image file."""


class UserError(Exception):
    """A problem with the user's input or environment, with what to do about it.

    The CLI prints ``str(error)`` on one line and exits non-zero, without a
    traceback. Raise it only where the message tells the user what to change.
    """


class DecodeFailure(Exception):
    """A file that cannot be used as an image; ``str(error)`` is a short human reason.

    Not a `UserError`: one bad file among thousands is skipped and listed, not fatal.
    """
