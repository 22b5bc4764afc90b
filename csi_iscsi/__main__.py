import sys

from csi_iscsi.entry import main

sys.exit(main())
