# `import lckernels_rl` (the package above this one) already ran before torch was imported: it set the OpenMP
# wait policy (lckernels_rl/_threads.py).
import sys

from .cli import main_train

sys.exit(main_train())
