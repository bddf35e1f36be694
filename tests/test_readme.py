"README.md must be exactly what nbs/index.ipynb renders to (README is generated, never hand-edited)."
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _tool():
    spec = importlib.util.spec_from_file_location('make_readme', ROOT/'tools'/'make_readme.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def test_readme_matches_index():
    text = _tool().render_readme(ROOT/'nbs'/'index.ipynb')
    assert (ROOT/'README.md').read_text(encoding='utf-8') == text, \
        'README.md drifted from nbs/index.ipynb: run `python tools/make_readme.py`'

def test_readme_has_two_setup_commands():
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    assert 'pip install -e ".[dev]" -c requirements-dev.txt' in readme
    assert 'OMP_NUM_THREADS=1 nbdev_test && pytest -q tests' in readme

def test_drift_is_detected(tmp_path):
    import json
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
    nb['cells'].append({'cell_type': 'markdown', 'metadata': {}, 'source': ['a new paragraph']})
    (tmp_path/'index.ipynb').write_text(json.dumps(nb), encoding='utf-8')
    assert _tool().render_readme(tmp_path/'index.ipynb') != (ROOT/'README.md').read_text(encoding='utf-8')
