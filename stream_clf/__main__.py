import sys

from stream_clf.cli import main

sys.exit(main())
