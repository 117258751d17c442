import sys

from lab.report import main

sys.exit(main())
