"""The C parts of the benchmark: they compile cleanly, and the cache rebuilds on change."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from loadgen import native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.mark.parametrize("source", [native.ENGINE_SOURCE, native.ECHO_SOURCE])
def test_sources_compile_without_warnings(source: Path) -> None:
    r = subprocess.run(
        ["cc", *native.CFLAGS, "-Werror", "-fsyntax-only", str(source)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_build_is_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    src = tmp_path / "hello.c"
    src.write_text("int main(void) { return 3; }\n")
    first = native.build(src, shared=False)
    assert first.parent == tmp_path / "iot-collector-bench"
    assert native.build(src, shared=False) == first  # cached
    assert subprocess.run([str(first)]).returncode == 3
    src.write_text("int main(void) { return 4; }\n")
    second = native.build(src, shared=False)
    assert second != first and subprocess.run([str(second)]).returncode == 4
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_broken_source_is_one_line_of_native_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return }\n")
    with pytest.raises(native.NativeError, match=r"cc broken\.c") as info:
        native.build(src, shared=False)
    assert "\n" not in str(info.value)
