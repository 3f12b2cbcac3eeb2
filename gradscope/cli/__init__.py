"""The command line: parse, call the library, render, map to an exit code. No computation lives here.

``app`` holds the one error boundary; ``options`` declares the shared flags once; each command module parses its
flags into one library call (``gradscope.verbs.files``, ``gradscope.scan``) and hands the Report to a view.
Exit codes: 0 no error finding; 1 error findings (warnings too with --strict); 2 bad input or usage; 130 Ctrl-C.
"""

from gradscope.cli import check, data, weights  # noqa: F401  (the commands register themselves on the app)
from gradscope.cli.app import EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_INTERRUPTED, EXIT_OK, app, exit_code

__all__ = ["EXIT_BAD_INPUT", "EXIT_FINDINGS", "EXIT_INTERRUPTED", "EXIT_OK", "app", "exit_code"]
