"""One error family: every exception class of the package derives from compress.errors.CompressError, which the CLI turns
into one `Error:` line and exit status 1, except the few listed here with the reason they are not a user's to fix."""

import importlib
import inspect

import pytest
from clirunner import error_line, invoke
from test_layout import modules

from compress.errors import CompressError

NOT_USER_ERRORS = {
    "compress.qweight.PackingError": "codes that do not fit their bit width: the quantizer made them, so it is a bug",
    "compress.checkpoint.Interrupted": "Ctrl-C or SIGTERM during training: exit status 130 once the checkpoint is saved",
    "compress.runtimes.session._CacheCannotServe": "the fold cache cannot serve a load: caught there, the graph folds in memory",
}


def exception_classes() -> dict[str, type]:
    out = {}
    for name in modules():
        mod = importlib.import_module(name)
        for cls in vars(mod).values():
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name:
                out[f"{name}.{cls.__qualname__}"] = cls
    return out


def test_every_error_class_derives_from_the_one_base():
    classes = exception_classes()
    assert len(classes) >= 20 and set(NOT_USER_ERRORS) <= set(classes)
    strays = sorted(n for n, c in classes.items() if not issubclass(c, CompressError) and n not in NOT_USER_ERRORS)
    assert not strays, f"derive these from compress.errors.CompressError (or list them in NOT_USER_ERRORS, saying why): {strays}"


@pytest.mark.parametrize("name", sorted(n for n, c in exception_classes().items() if issubclass(c, CompressError)))
def test_the_cli_prints_every_user_error_as_one_line(name, monkeypatch, tmp_path):
    from compress import run

    cls = exception_classes()[name]

    def fail(*a, **kw):
        raise cls(f"{name} says what to do")

    monkeypatch.setattr(run, "run", fail)
    r = invoke("run", "--task", "mrpc", "--out", tmp_path / "out")
    assert r.exit_code == 1 and error_line(r) == f"Error: {name} says what to do"
