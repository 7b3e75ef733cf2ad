import sys

from bigmodel_ray.cli import main

sys.exit(main())
