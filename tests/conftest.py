"""Shared by the tests: the real CVLUE sample, read in place and never copied (CC BY-NC-ND 4.0).

A test that reads it takes the `sample` fixture and says what it checks with `@pytest.mark.sample(what)`. Without
the sample (a fresh clone, `$CVLUE_SAMPLE` unset) it is skipped with one line:
"CVLUE sample not found (set CVLUE_SAMPLE): not checked: <what>".
"""
from pathlib import Path
import pytest
from fastcore.xtras import working_directory
from cvlue_nb.core import cvlue_sample_dir

with working_directory(Path(__file__).resolve().parent.parent):  # this checkout's settings.ini, wherever pytest starts
    SAMPLE = cvlue_sample_dir()   # a wrong $CVLUE_SAMPLE stops the run here with a clear error

def pytest_configure(config):
    config.addinivalue_line('markers', 'sample(what): the test reads the real CVLUE sample; without it, it is skipped '
                                       'with one line saying that `what` was not checked')

@pytest.fixture(scope='session')
def sample_dir() -> Path|None:
    "The real CVLUE sample folder, or None (for fixtures that prepare optional work)"
    return SAMPLE

@pytest.fixture
def sample(request) -> Path:
    "The real CVLUE sample folder; skips the test with one line saying what was not checked when it is absent"
    if SAMPLE is None:
        m = request.node.get_closest_marker('sample')
        pytest.skip(f"CVLUE sample not found (set CVLUE_SAMPLE): not checked: {m.args[0] if m else request.node.name}")
    return SAMPLE
