import os
import sys

from bundle.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:  # `python -m bundle plan ... | head`: not an error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
sys.exit(code)
