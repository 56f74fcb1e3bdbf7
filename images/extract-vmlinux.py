#!/usr/bin/env python3
"""Extracts the ELF vmlinux from an x86 bzImage (what the kernel's
scripts/extract-vmlinux does): find a compressed payload by its magic,
decompress it, and keep the first result that is an ELF image."""
import subprocess
import sys

MAGICS = [  # (magic bytes, decompress command)
    (b"\x02\x21\x4c\x18", ["lz4", "-dc"]),
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
    (b"\xfd7zXZ\x00", ["xz", "-dc"]),
    (b"\x1f\x8b\x08", ["gzip", "-dc"]),
]

def main(src: str, dst: str) -> int:
    data = open(src, "rb").read()
    for magic, cmd in MAGICS:
        start = data.find(magic)
        while start >= 0:
            out = subprocess.run(cmd, input=data[start:], capture_output=True).stdout
            if out[:4] == b"\x7fELF":
                open(dst, "wb").write(out)
                return 0
            start = data.find(magic, start + 1)
    print(f"extract-vmlinux: no compressed ELF kernel found in {src}", file=sys.stderr)
    return 1

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
