import sys

from segworks.cli import main

sys.exit(main())
