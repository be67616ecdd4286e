"""One base for every error that is the user's to fix (bad params, a bad input row, a missing model or index).

Stages and the `medssr` command print these as one line naming the file, line and field; anything else is a bug
and keeps its traceback.
"""


class MedssrError(Exception):
    """An error whose message alone tells the user what to fix."""
