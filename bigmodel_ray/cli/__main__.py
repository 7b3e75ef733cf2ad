"""`python -m bigmodel_ray.cli`: the entrypoint of a job submitted to a cluster (submit.py)."""

import sys

from bigmodel_ray.cli import main

sys.exit(main())
