"""Error type shared by the data readers: one bad file or malformed record in a data set on disk."""
from __future__ import annotations


class DataError(ValueError):
    """A data set on disk is malformed; the message is one line naming the case/file and the problem."""

    def __init__(self, message: str):
        # Library errors (nibabel, zlib, csv) can span lines; readers promise a one-line message.
        super().__init__(" ".join(str(message).split()))
