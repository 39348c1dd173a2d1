"""tav's caches: what may be lost at any time and only costs time to rebuild (never a record).

Under the platform's user cache folder: inductor's compiled kernels for `--compile`, and the sha256 of
single-file checkpoints by path, size and mtime (hashing 4 GB would add seconds to every edit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("tav"))


def compile_cache_dir() -> Path:
    """Where `--compile` keeps inductor's kernels and graphs: a folder the user set wins, else tav's cache."""
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir() / "inductor")


def use_compile_cache() -> None:
    """Point inductor at `compile_cache_dir()`, for later runs; it reads the variable at its first compile."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())


def file_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, remembered by path, size and mtime."""
    from tavcli.method.models import sha256_file

    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = cache_dir() / "checkpoint-sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    try:  # a cache, not a record: losing it only costs a re-hash
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: digest}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return digest
