#!/usr/bin/env python3
"""treediff.py BASE FULL OUT: copies into OUT what FULL adds to or changes in BASE.

Used to cut a layer out of a root file system: FULL is BASE after installing
packages; OUT (the SDK shard's tree) holds the new and changed entries, with
their modes, owners and times. Package-manager state, caches and logs are
left out: a layer carries files, not the host's apt state.
"""
import os
import shutil
import stat
import sys

SKIP = ("var/cache", "var/lib/apt", "var/lib/dpkg", "var/log", "etc/resolv.conf", "tmp", "run", "proc", "dev", "sys")


def same(a, b):
    sa, sb = os.lstat(a), os.lstat(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or sa.st_mode != sb.st_mode:
        return False
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    return True


def copy_entry(src, dst):
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    else:
        return
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def main(base, full, out):
    os.makedirs(out)
    dirs = []
    added = 0
    for root, subdirs, files in os.walk(full):
        rel_root = os.path.relpath(root, full)
        subdirs[:] = sorted(d for d in subdirs if not os.path.normpath(os.path.join(rel_root, d)).startswith(SKIP))
        for name in sorted(subdirs + files):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel.startswith(SKIP):
                continue
            src, old = os.path.join(full, rel), os.path.join(base, rel)
            is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
            if os.path.lexists(old) and (is_dir and stat.S_ISDIR(os.lstat(old).st_mode) or same(src, old)):
                if is_dir:
                    dirs.append(rel)  # created in OUT only if something under it changed
                continue
            parent = os.path.dirname(rel)
            if parent and not os.path.lexists(os.path.join(out, parent)):
                os.makedirs(os.path.join(out, parent))
            if not os.path.lexists(os.path.join(out, rel)):
                copy_entry(src, os.path.join(out, rel))
                added += 1
    # Parent directories made above get FULL's metadata, deepest first (times last).
    for rel in sorted(dirs, key=len, reverse=True):
        d = os.path.join(out, rel)
        if os.path.isdir(d) and not os.path.islink(d):
            st = os.lstat(os.path.join(full, rel))
            os.lchown(d, st.st_uid, st.st_gid)
            os.chmod(d, stat.S_IMODE(st.st_mode))
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    print(f"treediff: {added} entries new or changed")


if __name__ == "__main__":
    main(*sys.argv[1:4])
