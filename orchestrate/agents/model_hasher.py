"""Hashes a model directory on a host: `python3 -c <this file> ROOT [options]` (Python >= 3.6,
standard library only; ops/modelcheck.py sends it as text, values only as argv). Prints one JSON
document: {"files": {rel: [size, mtime_ns, sha256]}, "bytes_read": ...}. It walks the directory,
hashes each file once in large blocks, several files in parallel (hashlib releases the GIL), and
keeps a per-host cache keyed by absolute path + size + mtime_ns + ctime_ns + inode."""

import argparse
import hashlib
import json
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BLOCK = 4 << 20
RACY_NS = 2 * 10**9
MAX_MANIFEST = 4 << 20


def sig(st):
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_of(path):
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


def hash_one(path, st):
    """(sha256, bytes read, final stat, stable): re-hash while the file changes under us."""
    read = 0
    for _ in range(3):
        digest, n = sha256_of(path)
        read += n
        st2 = os.stat(path)
        if sig(st2) == sig(st):
            return digest, read, st2, True
        st = st2
    return digest, read, st, False


def walk(root, out):
    entries = []

    def onerror(exc):
        out["errors"][os.path.relpath(exc.filename or root, root)] = exc.strerror or str(exc)

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        # hidden directories (.cache/huggingface, .git) are download metadata, not the model
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                st = os.stat(path)
            except OSError as exc:
                out["errors"][rel] = exc.strerror or str(exc)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if name.endswith(".partial"):
                out["partials"][rel] = st.st_size
                continue
            entries.append((rel, path, st))
    return entries


def load_cache(path, out):
    try:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("files"), dict):
            return data["files"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        out["cache_error"] = "ignored unreadable cache %s: %s" % (path, exc)
    return {}


def save_cache(path, files, out):
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as f:
            json.dump({"v": 1, "files": files}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as exc:
        out["cache_error"] = "cannot write cache %s: %s" % (path, exc)


def parse_args():
    p = argparse.ArgumentParser(prog="orchestrate-modelcheck")
    p.add_argument("root")
    p.add_argument("--cache", default="~/.cache/orchestrate/sha256-cache.json")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--rehash", action="store_true")
    p.add_argument("--manifest", default="")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--only", action="append", default=[])
    return p.parse_args()


def listed(root, only, out):
    """(rel, path, stat) of the files asked for by name; what cannot be read goes to errors."""
    entries = []
    for rel in only:
        path = os.path.join(root, rel)
        try:
            entries.append((rel, path, os.stat(path)))
        except OSError as exc:
            out["errors"][rel] = exc.strerror or str(exc)
    return entries


def from_cache(entries, cache, rehash, out):
    """Take what the cache still vouches for; the rest, biggest first, is left to hash."""
    todo = []
    for rel, path, st in entries:
        hit = cache.get(path)
        if not rehash and isinstance(hit, list) and len(hit) == 5 and hit[:4] == sig(st):
            out["files"][rel] = [st.st_size, st.st_mtime_ns, hit[4]]
            out["cached"] += 1
        else:
            todo.append((rel, path, st))
    todo.sort(key=lambda e: -e[2].st_size)  # biggest first: the threads finish together
    return todo


def hash_all(todo, threads, cache, out):
    """Hash todo on threads into out; cache (None: no cache) learns the stable, settled ones.
    True when the cache changed."""
    start_ns = int(time.time() * 1e9)

    def work(entry):
        rel, path, st = entry
        try:
            return rel, path, hash_one(path, st), None
        except OSError as exc:
            return rel, path, None, exc.strerror or str(exc)

    changed = False
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for rel, path, res, err in pool.map(work, todo):
            if err is not None:
                out["errors"][rel] = err
                continue
            digest, n, st, stable = res
            out["bytes_read"] += n
            out["hashed"] += 1
            if not stable:
                out["errors"][rel] = "the file kept changing while it was hashed"
                continue
            out["files"][rel] = [st.st_size, st.st_mtime_ns, digest]
            # racy: a write within the mtime granularity would not change the key
            if cache is not None and st.st_mtime_ns < start_ns - RACY_NS:
                cache[path] = sig(st) + [digest]
                changed = True
    return changed


def prune_cache(cache, root, entries, changed):
    """Forget files gone from this model directory, and (when the cache is rewritten anyway)
    from anywhere else; True when the cache must be saved."""
    prefix = root.rstrip("/") + "/"
    seen = set(os.path.join(root, rel) for rel, _, _ in entries)
    for path in [k for k in cache if k.startswith(prefix) and k not in seen]:
        del cache[path]
        changed = True
    if changed:
        for path in [k for k in cache if k not in seen and not os.path.exists(k)]:
            del cache[path]  # deleted models
    return changed


def read_manifest(root, name, out):
    try:
        with open(os.path.join(root, name), "rb") as f:
            out["manifest"] = f.read(MAX_MANIFEST).decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        pass
    except OSError as exc:
        out["errors"][name] = exc.strerror or str(exc)


def main():
    a = parse_args()
    t0 = time.time()
    root = os.path.abspath(os.path.expanduser(a.root))
    threads = a.threads or min(8, os.cpu_count() or 1)
    out = {
        "v": 1,
        "root": root,
        "exists": os.path.isdir(root),
        "files": {},
        "partials": {},
        "errors": {},
        "manifest": None,
        "bytes_read": 0,
        "hashed": 0,
        "cached": 0,
        "threads": threads,
        "cache": None,
        "cache_error": None,
        "python": "%d.%d.%d" % sys.version_info[:3],
    }
    if out["exists"]:
        entries = listed(root, a.only, out) if a.only else walk(root, out)
        use_cache = not a.no_cache and not a.only
        cache_path = os.path.expanduser(a.cache)
        cache = load_cache(cache_path, out) if use_cache else None
        if use_cache:
            out["cache"] = cache_path
        todo = from_cache(entries, cache or {}, a.rehash, out)
        changed = hash_all(todo, threads, cache, out)
        if cache is not None and prune_cache(cache, root, entries, changed):
            save_cache(cache_path, cache, out)
        if a.manifest and not a.only:
            read_manifest(root, a.manifest, out)
    out["seconds"] = time.time() - t0
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":  # python3 -c runs it as __main__
    main()
