from bigmodel_ray.cli import main
import sys
sys.exit(main())
