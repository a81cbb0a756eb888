import sys

from .cli import main_train

sys.exit(main_train())
