# numpy_demo.py: runs in the guest with the SDK shard (CPython) and the libs
# shard (numpy, with its C extensions and bundled OpenBLAS) attached.
import sys

import numpy as np

print(f"numpy {np.__version__} from {np.__file__.rsplit('/', 2)[0]} on Python {sys.version.split()[0]}")
rng = np.random.default_rng(7)
a = rng.standard_normal((200, 200))
b = a @ a.T + 200 * np.eye(200)  # symmetric positive definite
x = np.linalg.solve(b, np.ones(200))
print(f"solved a 200x200 system: residual {np.linalg.norm(b @ x - 1):.2e}")
print(f"largest eigenvalue {np.linalg.eigvalsh(b).max():.3f}")
