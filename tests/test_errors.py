"""One error hierarchy below the agent: every typed error of the devices and of the session
file derives from `MicagentError` and names where it happened, so one `except` stops on any."""

from __future__ import annotations

import inspect

import pytest

from instruments.devices import errors, replay
from instruments.devices.errors import MicagentError
from instruments.session_file import export, hdf5_probe, layout

MODULES = (errors, replay, layout, export, hdf5_probe)


def typed_errors() -> list[type[BaseException]]:
    return [obj for module in MODULES for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__]


def test_every_typed_error_of_devices_and_session_files_shares_one_base():
    found = typed_errors()
    assert {"InstrumentTimeout", "SessionFileCorrupt", "ExportError",
            "ProbeFailed"} <= {cls.__name__ for cls in found}
    assert [cls.__name__ for cls in found if not issubclass(cls, MicagentError)] == []


@pytest.mark.parametrize("error", [errors.InstrumentTimeout("no reply", "tem://h:1"),
                                   layout.SessionFileCorrupt("broken", "/data/s.h5")])
def test_each_names_where_it_happened(error):
    assert error.where in str(error) and isinstance(error, MicagentError)
