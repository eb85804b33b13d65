"""The error a dataset reader raises for a malformed layout."""


class LayoutError(FileNotFoundError):
    """A dataset folder whose layout does not match the reader; the message names the file or
    folder. A FileNotFoundError, so vos-train reports it as one line."""
