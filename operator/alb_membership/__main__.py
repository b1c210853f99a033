import sys

from alb_membership.cli import main

sys.exit(main())
