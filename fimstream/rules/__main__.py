"""`python -m fimstream.rules lint|test|explain|docs ...` (same as `fimstream rules ...`)."""
import sys

from .cli import main

sys.exit(main(["rules", *sys.argv[1:]]))
