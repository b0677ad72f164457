import sys

from fimstream.cli import main

sys.exit(main())
