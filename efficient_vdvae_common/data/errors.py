"""The data errors: each message names the setting or the file at fault."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset that is missing, empty or not in the expected format."""


class CorruptImageError(DataError):
    """An image file that cannot be decoded to 8-bit pixels; the message names the file.

    Covers truncated and non-image files, decompression bombs and pixel modes
    without a fixed 8-bit meaning; `data.skip_corrupt_images` skips them all.
    """


class NotAFolderError(DataError):
    """A data.*_path that exists but is a file (or another non-folder)."""
