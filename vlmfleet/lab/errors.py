"""The lab's one error type: a message an operator can act on, printed as one line."""


class LabError(Exception):
    """What went wrong and what to do about it, in one line (no traceback is shown)."""
