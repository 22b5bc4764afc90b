import sys

from csi_iscsi.cli import main

sys.exit(main())
