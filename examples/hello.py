"""Runs inside a vmexec guest: prints where it runs and something it computed."""
import hashlib
import platform
import sys

print(f"Python {sys.version.split()[0]} on {platform.system()} {platform.release()} ({platform.machine()})")
primes = [n for n in range(2, 200) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
print(f"{len(primes)} primes below 200, the largest {primes[-1]}")
print("sha256('vmexec') =", hashlib.sha256(b"vmexec").hexdigest()[:16] + "…")
