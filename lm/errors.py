"""The one exception type for bad user input.

Raise `UserError` with a one-line message naming the problem; the command-line
runner prints it and exits with status 2 instead of showing a traceback.
"""


class UserError(Exception):
  """Bad input from the user: a missing file, a wrong config, a mismatched checkpoint."""
