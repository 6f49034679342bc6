import sys

from bridged.daemon import main

sys.exit(main())
