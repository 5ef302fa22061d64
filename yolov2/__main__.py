"""`python -m yolov2 ...` is the `yolov2` command."""

from yolov2.cli import main

raise SystemExit(main())
