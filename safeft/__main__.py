import sys

from safeft.cli import main

sys.exit(main())
