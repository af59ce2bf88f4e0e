import sys

from tokenflow_cli.main import main

sys.exit(main())
