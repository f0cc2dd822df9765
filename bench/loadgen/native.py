"""C parts of the benchmark, compiled on demand with the machine's C compiler.

The collector is pure Python; the benchmark may not be. Two small C sources live
beside the Python: ``loadgen/engine.c``, the generator's inner loop (a shared library
called through ctypes, :mod:`loadgen.cengine`), and ``peers/echo.c``, the C echo peer
(an executable). :func:`build` compiles one with ``cc -O2`` (``$CC`` if set) into a
cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``iot-collector-bench``),
named by a hash of the source and the compiler's flags, so an edit rebuilds and two
checkouts never share a stale binary. Writes go to a temporary name and are renamed
into place, so processes building at once cannot see half a file. Where no compiler
works, :class:`NativeError` says why and the caller falls back (the Python engine) or
skips (the C echo).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

LOADGEN = Path(__file__).resolve().parent
ENGINE_SOURCE = LOADGEN / "engine.c"
ECHO_SOURCE = LOADGEN.parent / "peers" / "echo.c"
# warnings are not errors here: a newer compiler's new warning must not cost a run its
# C engine (tests/bench/test_native.py compiles both sources with -Werror)
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra")


class NativeError(RuntimeError):
    """A C part cannot be built or loaded here; the message says why (one line)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iot-collector-bench"


def compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    found = shutil.which(cc)
    if found is None:
        raise NativeError(f"no C compiler ({cc}) on PATH")
    return found


def build(source: Path, shared: bool) -> Path:
    """The compiled ``source`` (a shared library when ``shared``), from the cache or
    compiled now. Raises NativeError when it cannot be compiled."""
    cc = compiler()
    flags = (*CFLAGS, "-shared", "-fPIC") if shared else CFLAGS
    digest = hashlib.sha256(source.read_bytes() + cc.encode() + " ".join(flags).encode())
    name = f"{source.stem}-{digest.hexdigest()[:16]}{'.so' if shared else ''}"
    target = cache_dir() / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    os.close(fd)
    try:
        r = subprocess.run(
            [cc, *flags, "-o", tmp, str(source)], capture_output=True, text=True, timeout=120
        )
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[0]
            raise NativeError(f"cc {source.name}: {first}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


__all__ = ["ECHO_SOURCE", "ENGINE_SOURCE", "NativeError", "build", "cache_dir"]
