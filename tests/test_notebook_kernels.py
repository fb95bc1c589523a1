"""The root conftest.py: nbval kernels that die while starting are retried and say why; cells are not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _root_conftest():
    """The repository's root conftest.py as a module (pytest has loaded it; this is a second, plain copy)."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_start_is_retried_then_succeeds():
    calls = []

    def start():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return "kernel"

    with pytest.warns(UserWarning, match="kernel failed to start"):
        assert _root_conftest().start_with_retries(start, "demo.ipynb", tries=3, pause_s=0) == "kernel"
    assert len(calls) == 3


def test_a_start_that_keeps_failing_raises_after_the_last_try():
    calls = []

    def start():
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="Kernel died"):
        _root_conftest().start_with_retries(start, "demo.ipynb", tries=2, pause_s=0)
    assert len(calls) == 2


def test_other_errors_are_not_retried():
    calls = []

    def start():
        calls.append(1)
        raise ValueError("not a kernel start failure")

    with pytest.raises(ValueError):
        _root_conftest().start_with_retries(start, "demo.ipynb", tries=3, pause_s=0)
    assert len(calls) == 1


def test_nbval_is_patched_and_a_dying_kernel_reports_its_stderr(monkeypatch):
    nbval_plugin = pytest.importorskip("nbval.plugin")
    from nbval import kernel as nbval_kernel

    assert nbval_plugin.IPyNbFile.setup.__name__ == "setup_with_retries"
    assert nbval_plugin.RunningKernel.__name__ == "LoggedKernel"

    def dies(*, stderr, **_):
        stderr.write("ZMQError: Address already in use\n")
        stderr.flush()
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(nbval_kernel, "start_new_kernel", dies)
    with pytest.raises(RuntimeError, match="(?s)Kernel died.*Address already in use"):
        nbval_plugin.RunningKernel("python3")
