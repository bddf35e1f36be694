"""The fast, static half of tools/check_docs.py (no notebook runs; .ci/run calls the full check), and proof that the
checker catches each kind of problem it looks for."""
import copy, importlib.util, json, shutil, sys, textwrap
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

def _tool():
    spec = importlib.util.spec_from_file_location('check_docs', ROOT/'tools'/'check_docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

cd = _tool()

@pytest.fixture(scope='module')
def nb_files(): return cd.notebooks()

def _fmt(probs): return '\n'.join(probs)

# ------------------------------------------------------------------------------------------ the project as it is
def test_config_files_parse_and_exist():
    probs = cd.config_problems()
    assert not probs, _fmt(probs)

def test_every_notebook_in_sidebar(nb_files):
    assert any(Path(p).name == 'index.ipynb' for p in nb_files)
    probs = cd.sidebar_problems(cd.NBS, nb_files)
    assert not probs, _fmt(probs) + '\n(regenerate with `python tools/check_docs.py --write`)'

def test_every_notebook_has_a_title(nb_files):
    probs = [p for nb in nb_files for p in cd.title_problems(nb)]
    assert not probs, _fmt(probs)

def test_no_error_outputs(nb_files):
    probs = [p for nb in nb_files for p in cd.output_problems(nb)]
    assert not probs, _fmt(probs)

def test_exported_names_have_docstrings():
    mods, probs = cd.library_modules()
    assert mods and not probs, _fmt(probs)
    probs = cd.docstring_problems(mods)
    assert not probs, _fmt(probs)

def test_readme_matches_index():
    probs = cd.readme_problems()
    assert not probs, _fmt(probs)

def test_readme_has_the_two_setup_commands():
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    assert 'pip install -e ".[dev]" -c requirements-dev.txt' in readme
    assert 'OMP_NUM_THREADS=1 nbdev_test && pytest -q tests' in readme

def test_check_mode_leaves_config_files_alone():
    files = ('_quarto.yml', 'nbdev.yml', 'sidebar.yml')
    before = {f: (cd.NBS/f).read_bytes() for f in files if (cd.NBS/f).exists()}
    cd.regenerate_config(write=False)
    assert {f: (cd.NBS/f).read_bytes() for f in files if (cd.NBS/f).exists()} == before

# ------------------------------------------------------------------------------------------ planted problems
def _nb(cells):
    return {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}

def _code(src, outputs=()):
    return {'cell_type': 'code', 'execution_count': None, 'id': 'c%d' % abs(hash(src) % 10**6), 'metadata': {},
            'outputs': list(outputs), 'source': src}

def _md(src): return {'cell_type': 'markdown', 'id': 'm%d' % abs(hash(src) % 10**6), 'metadata': {}, 'source': src}

def test_planted_error_output_is_caught(tmp_path):
    nb = json.loads((ROOT/'nbs'/'00_core.ipynb').read_text(encoding='utf-8'))
    (tmp_path/'clean.ipynb').write_text(json.dumps(nb), encoding='utf-8')
    assert cd.output_problems(tmp_path/'clean.ipynb') == []
    bad = copy.deepcopy(nb)
    i = next(k for k, c in enumerate(bad['cells']) if c['cell_type'] == 'code')
    bad['cells'][i]['outputs'].append({'output_type': 'error', 'ename': 'NameError', 'evalue': "name 'x' is not defined",
                                       'traceback': ['...']})
    (tmp_path/'bad.ipynb').write_text(json.dumps(bad), encoding='utf-8')
    probs = cd.output_problems(tmp_path/'bad.ipynb')
    assert len(probs) == 1 and f'cell {i}' in probs[0] and 'NameError' in probs[0], probs

def test_planted_printed_traceback_is_caught(tmp_path):
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n'
    nb = _nb([_code('print(1)', [{'output_type': 'stream', 'name': 'stdout', 'text': ['1\n']}]),
              _code('run()', [{'output_type': 'stream', 'name': 'stderr', 'text': [tb]}])])
    (tmp_path/'t.ipynb').write_text(json.dumps(nb), encoding='utf-8')
    probs = cd.output_problems(tmp_path/'t.ipynb')
    assert len(probs) == 1 and 'cell 1' in probs[0] and 'stderr' in probs[0], probs

def test_planted_sidebar_gaps_are_caught(tmp_path):
    (tmp_path/'tutorials').mkdir()
    for f in ('index.ipynb', '00_a.ipynb', 'tutorials/guide.ipynb'):
        (tmp_path/f).write_text(json.dumps(_nb([_md('# T')])), encoding='utf-8')
    (tmp_path/'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - index.ipynb\n      - 00_a.ipynb\n'
                                        '      - section: more\n        contents:\n          - 99_gone.ipynb\n',
                                        encoding='utf-8')
    files = [tmp_path/'index.ipynb', tmp_path/'00_a.ipynb', tmp_path/'tutorials'/'guide.ipynb']
    probs = cd.sidebar_problems(tmp_path, files)
    assert len(probs) == 2, probs
    assert any("'99_gone.ipynb' does not exist" in p for p in probs)
    assert any('guide.ipynb is not in the sidebar' in p for p in probs)
    (tmp_path/'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - index.ipynb\n      - 00_a.ipynb\n'
                                        '      - section: tutorials\n        contents:\n          - tutorials/guide.ipynb\n',
                                        encoding='utf-8')
    assert cd.sidebar_problems(tmp_path, files) == []

def test_planted_config_problems_are_caught(tmp_path):
    (tmp_path/'_quarto.yml').write_text('format:\n  html:\n    css: missing.css\nmetadata-files: [nbdev.yml, sidebar.yml]\n')
    (tmp_path/'nbdev.yml').write_text('website: {title: x}\n')
    assert {'sidebar.yml is missing' in p for p in cd.config_problems(tmp_path)} == {True}
    (tmp_path/'sidebar.yml').write_text('website: [unclosed\n')
    assert any('does not parse' in p for p in cd.config_problems(tmp_path))
    (tmp_path/'sidebar.yml').write_text('website: {sidebar: {contents: []}}\n')
    probs = cd.config_problems(tmp_path)
    assert len(probs) == 1 and "css file 'missing.css'" in probs[0], probs

def test_planted_missing_docstrings_are_caught(tmp_path, monkeypatch):
    (tmp_path/'fake_lib_docs.py').write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from fastcore.basics import patch
        __all__ = ['good', 'bad', 'Good', 'Bare', 'Rec', 'CONST']
        def good(x:int): "Documented"; return x
        def bad(x:int): return x
        class Good:
            "Documented"
            def method(self): return 1          # body methods are not required to have one
        class Bare: pass
        @dataclass
        class Rec: a: int                       # dataclasses write `Rec(a: int)` as __doc__: not a docstring
        @patch
        def patched(self:Good): return 2
        @patch
        def patched_ok(self:Good): "Documented"; return 3
        CONST = 3
        '''), encoding='utf-8')
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib; mod = importlib.import_module('fake_lib_docs')
    probs = cd.docstring_problems([mod])
    assert sorted(p.split(' ')[0] for p in probs) == ['fake_lib_docs.Bare', 'fake_lib_docs.Good.patched',
                                                     'fake_lib_docs.Rec', 'fake_lib_docs.bad'], probs

def test_planted_mixed_import_cell_is_warned(tmp_path):
    exp = _code('#| export\ndef f(): "Documented"; return 1')
    nb = _nb([_md('# T'), exp, _code('import os'), _code('from pathlib import Path\np = Path(data_dir)')])
    (tmp_path/'m.ipynb').write_text(json.dumps(nb), encoding='utf-8')
    w = cd.mixed_import_warnings(tmp_path/'m.ipynb')
    assert len(w) == 1 and 'cell 3' in w[0], w
    nb['cells'].remove(exp)                 # no API docs: the docs build runs no code, nothing to warn about
    (tmp_path/'m.ipynb').write_text(json.dumps(nb), encoding='utf-8')
    assert cd.mixed_import_warnings(tmp_path/'m.ipynb') == []

def test_planted_missing_title_is_caught(tmp_path):
    (tmp_path/'n.ipynb').write_text(json.dumps(_nb([_code('x = 1')])), encoding='utf-8')
    assert any('no title' in p for p in cd.title_problems(tmp_path/'n.ipynb'))
    (tmp_path/'t.ipynb').write_text(json.dumps(_nb([_md('# A title\n> a subtitle'), _code('x = 1')])), encoding='utf-8')
    assert cd.title_problems(tmp_path/'t.ipynb') == []

def test_planted_readme_drift_is_caught(tmp_path):
    (tmp_path/'tools').mkdir(); (tmp_path/'nbs').mkdir()
    shutil.copy(ROOT/'tools'/'make_readme.py', tmp_path/'tools')
    shutil.copy(ROOT/'nbs'/'index.ipynb', tmp_path/'nbs')
    shutil.copy(ROOT/'README.md', tmp_path)
    assert cd.readme_problems(tmp_path) == cd.readme_problems(ROOT)
    with open(tmp_path/'README.md', 'a', encoding='utf-8') as f: f.write('\nhand edit\n')
    assert any('does not match' in p for p in cd.readme_problems(tmp_path))

def test_custom_sidebar_is_never_rewritten(tmp_path, monkeypatch):
    "nbdev_sidebar (as check_docs calls it) leaves a hand-written sidebar alone once custom_sidebar = True"
    from nbdev.config import get_config
    from nbdev.quarto import nbdev_sidebar
    (tmp_path/'nbs').mkdir()
    (tmp_path/'nbs'/'index.ipynb').write_text(json.dumps(_nb([_md('# T')])), encoding='utf-8')
    (tmp_path/'nbs'/'01_b.ipynb').write_text(json.dumps(_nb([_md('# B')])), encoding='utf-8')
    custom = 'website:\n  sidebar:\n    contents:\n      - 01_b.ipynb\n      - index.ipynb\n'
    monkeypatch.chdir(tmp_path)
    try:
        for flag, rewritten in (('True', False), ('False', True)):
            (tmp_path/'settings.ini').write_text(f'[DEFAULT]\nlib_name = fakelib\nlib_path = fakelib\nnbs_path = nbs\n'
                                                 f'recursive = True\ncustom_sidebar = {flag}\n')
            (tmp_path/'nbs'/'sidebar.yml').write_text(custom)
            get_config.cache_clear()
            nbdev_sidebar.__wrapped__()
            assert ((tmp_path/'nbs'/'sidebar.yml').read_text() != custom) == rewritten, flag
    finally: get_config.cache_clear()

def test_planted_docs_build_failure_is_caught(tmp_path):
    "The docs build runs import cells without the test cells before them: a NameError there is reported by cell"
    exp = _code('#| export\ndef f(): "Documented"; return 1')   # only notebooks with API docs run code in the docs build
    good = _nb([_md('# Good\n> fine'), exp, _code('x = 1'), _code('import os')])
    bad = _nb([_md('# Bad\n> mixes an import with test code'), exp, _code('x = 1'), _code('import os\nprint(x)')])
    (tmp_path/'good.ipynb').write_text(json.dumps(good), encoding='utf-8')
    (tmp_path/'bad.ipynb').write_text(json.dumps(bad), encoding='utf-8')
    assert cd.process_one(tmp_path/'good.ipynb', tmp_path/'out'/'good.ipynb') == []
    assert (tmp_path/'out'/'good.ipynb').exists()
    probs = cd.process_one(tmp_path/'bad.ipynb', tmp_path/'out'/'bad.ipynb')
    assert len(probs) == 1 and 'cell 3' in probs[0] and 'NameError' in probs[0], probs
    assert cd.processed_problems([], tmp_path/'out') == []
