import sys

from mixconv.cli import main

sys.exit(main())
