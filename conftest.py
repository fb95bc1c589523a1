"""pytest set-up shared by tests/ and notebooks/: start nbval's notebook kernels robustly.

nbval starts one kernel per notebook and sends its stderr to /dev/null, so a kernel that dies while
starting (seen once in CI: two workers starting kernels at once can race for the same free port)
fails every cell of that notebook with no reason given. Here the kernel's stderr goes to a log
file whose tail is shown, and a failed start is retried: the cells themselves are never retried.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
KERNEL_START_TRIES = 3


def start_with_retries(start: Callable[[], T], what: str, tries: int = KERNEL_START_TRIES, pause_s: float = 2.0) -> T:
    """start(), retried up to `tries` times when it raises RuntimeError (a kernel that died while starting)."""
    for attempt in range(1, tries + 1):
        try:
            return start()
        except RuntimeError as error:
            if attempt == tries:
                raise
            warnings.warn(f"{what}: kernel failed to start ({error}); try {attempt + 1} of {tries}", stacklevel=2)
            time.sleep(pause_s * attempt)
    raise AssertionError("unreachable")


def _patch_nbval() -> None:
    """Make nbval log each kernel's stderr and retry a kernel that dies while starting."""
    try:
        from nbval import kernel as nbval_kernel
        from nbval import plugin as nbval_plugin
    except ImportError:  # nbval is a test dependency; without it there are no notebook items to patch
        return

    class LoggedKernel(nbval_kernel.RunningKernel):
        """nbval's RunningKernel with stderr kept in a file, so a kernel that dies says why."""

        def __init__(self, kernel_name: str, cwd: str | None = None, startup_timeout: int = 60) -> None:
            log = Path(tempfile.mkstemp(prefix="nbval-kernel-", suffix=".log")[1])
            with log.open("w") as stderr:
                try:
                    self.km, self.kc = nbval_kernel.start_new_kernel(
                        startup_timeout=startup_timeout, kernel_name=kernel_name, stderr=stderr, cwd=cwd)
                except RuntimeError as error:
                    tail = log.read_text()[-2000:].strip() or "(the kernel wrote nothing to stderr)"
                    raise RuntimeError(f"{error}; kernel stderr ({log}):\n{tail}") from error
            self._ensure_iopub_up()

    setup = nbval_plugin.IPyNbFile.setup

    def setup_with_retries(self) -> None:
        start_with_retries(lambda: setup(self), what=str(self.fspath.basename))

    nbval_plugin.RunningKernel = LoggedKernel
    nbval_plugin.IPyNbFile.setup = setup_with_retries


_patch_nbval()
