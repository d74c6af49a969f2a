"""`attention: auto` picks flash-attn only when it really imports (a wheel for another torch/CUDA must not win)."""

from __future__ import annotations

import sys

import pytest

import safeft.model as m


@pytest.fixture
def fake_flash(tmp_path, monkeypatch):
    """Write a fake `flash_attn` package (and its extension module) with the given bodies onto sys.path."""
    def make(init: str, ext: str | None) -> None:
        pkg = tmp_path / "flash_attn"
        pkg.mkdir()
        (pkg / "__init__.py").write_text(init)
        if ext is not None:
            (tmp_path / "flash_attn_2_cuda.py").write_text(ext)
        monkeypatch.syspath_prepend(str(tmp_path))
        for name in ("flash_attn", "flash_attn_2_cuda"):
            monkeypatch.delitem(sys.modules, name, raising=False)
    yield make
    for name in ("flash_attn", "flash_attn_2_cuda"):
        sys.modules.pop(name, None)


BROKEN = [
    ("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')", None),
    ("import flash_attn_2_cuda", "raise OSError('libcudart.so.12: cannot open shared object file')"),
    ("", None),  # the package is there but its CUDA extension is missing
]


@pytest.mark.parametrize("init,ext", BROKEN)
def test_broken_flash_attn_falls_back(fake_flash, init, ext, monkeypatch, caplog):
    fake_flash(init, ext)
    monkeypatch.setattr(m, "_torch_varlen", lambda: None)  # so the fallback is visible as sdpa
    with caplog.at_level("WARNING", logger="safeft.model"):
        assert m.select_attention("auto", "cuda") == "sdpa"
    assert "flash-attn is installed but does not import" in caplog.text
    with pytest.raises(m.SafeftError, match="flash_attn"):
        m.select_attention("flash_attn", "cuda")


def test_working_flash_attn_is_chosen(fake_flash, monkeypatch):
    import transformers.utils

    fake_flash("", "")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert m.select_attention("auto", "cuda") == "flash_attention_2"
    assert m.select_attention("auto", "cpu") == "sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert m.select_attention("auto", "cuda") != "flash_attention_2"


def test_no_flash_attn_is_quiet(monkeypatch, caplog):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert not m.flash_attn_usable()
    assert not caplog.text
