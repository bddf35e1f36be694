"""Check the docs site builds, without quarto (it cannot be installed here; see ../shared/reference/nbdev_setup.md §5).

    python tools/check_docs.py                # full check: config, sidebar, docs processing into _proc/, outputs, docstrings, README
    python tools/check_docs.py --static       # the fast part only (no notebook execution)
    python tools/check_docs.py --write        # also keep the regenerated nbs/nbdev.yml and nbs/sidebar.yml
    python tools/check_docs.py --workers 2    # docs processing in 2 spawned processes (default 0: in this process)

Everything goes through nbdev's Python API. The CLI wrappers `nbdev_docs`, `nbdev_proc_nbs` and `nbdev_readme` are
never called: without quarto they try to install it and re-install this package.
1. `refresh_quarto_yml()` and `nbdev_sidebar` (its undecorated function, default arguments) regenerate `nbs/nbdev.yml`
   and `nbs/sidebar.yml` as `nbdev_docs` would. Without `--write` the committed files are kept and a difference is
   reported as a problem. `nbdev_sidebar` does nothing when settings.ini has `custom_sidebar = True`: then the
   hand-written sidebar is only checked.
2. `nbdev.serve.proc_nbs(force=True)` processes every notebook into `_proc/` (the real docs build up to
   `quarto render`): it runs every exported cell, import cell and `show_doc`, and renders the API docs.
3. Validation: the yml files parse; `metadata-files` and css files exist; every sidebar entry exists; every notebook
   nbglob finds (subfolders too) is in the sidebar and has a front-matter title; no processed notebook and no
   committed notebook has an error output or a printed traceback; every public function/class in each module's
   `__all__` (and every public `@patch` method on those classes) has a docstring; README.md is what
   tools/make_readme.py renders from nbs/index.ipynb.
Exit status 1 with the list of problems when anything is wrong; warnings (for example cells that mix imports with
other code, which nbdev warns about) are printed but do not fail the check.
"""
import argparse, contextlib, importlib, importlib.util, inspect, io, json, os, re, sys, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
TRACEBACK = 'Traceback (most recent call last)'

def _rel(p, base=ROOT):
    try: return str(Path(p).resolve().relative_to(base))
    except ValueError: return str(p)

# ---------------------------------------------------------------------------------------------- notebooks
def notebooks(nbs=NBS) -> list:
    "Every notebook nbdev builds (nbglob: recursive per settings.ini, skips `_*`/`.*` files and folders)"
    from nbdev.doclinks import nbglob
    return sorted(Path(p) for p in nbglob(nbs))

def _load(path): return json.loads(Path(path).read_text(encoding='utf-8'))

def output_problems(nb_path, label=None) -> list:
    "Error outputs and printed tracebacks stored in a notebook's cells"
    label, res = label or _rel(nb_path), []
    try: nb = _load(nb_path)
    except (OSError, ValueError) as e: return [f'{label}: cannot read notebook ({e})']
    for i, c in enumerate(nb.get('cells', [])):
        for o in c.get('outputs', []) or []:
            kind = o.get('output_type')
            if kind == 'error':
                res.append(f"{label}: cell {i} has an error output: {o.get('ename', '?')}: {str(o.get('evalue', ''))[:200]}")
            elif kind == 'stream' and TRACEBACK in ''.join(o.get('text', [])):
                res.append(f"{label}: cell {i} printed a traceback on {o.get('name', 'a stream')}")
            elif kind in ('execute_result', 'display_data') and TRACEBACK in ''.join((o.get('data') or {}).get('text/plain', [])):
                res.append(f'{label}: cell {i} displays a traceback')
    return res

def frontmatter(nb_path) -> dict:
    "The front matter nbdev's docs build gives a notebook (raw YAML cell, or `# Title` + `> description`)"
    from nbdev.process import NBProcessor
    from nbdev.processors import FrontmatterProc
    p = NBProcessor(nb_path, procs=[FrontmatterProc])
    p.process()
    return dict(getattr(p.nb, 'frontmatter_', {}) or {})

def title_problems(nb_path) -> list:
    "A notebook must have a front-matter title (its page title and sidebar text)"
    try: fm = frontmatter(nb_path)
    except Exception as e: return [f'{_rel(nb_path)}: cannot read its front matter ({type(e).__name__}: {e})']
    return [] if str(fm.get('title') or '').strip() else [f'{_rel(nb_path)}: no title (start it with a `# Title` markdown cell)']

def mixed_import_warnings(nb_path) -> list:
    "Cells the docs build runs because they import, but that also hold other code (nbdev's own rule)"
    from nbdev.process import NBProcessor
    from nbdev.processors import _do_eval
    found = []
    def _chk(cell):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            _do_eval(cell)
        if any('imports and other code' in str(x.message) for x in w): found.append(cell.idx_)
    try:
        from nbdev.processors import add_show_docs
        probe = NBProcessor(nb_path, procs=[add_show_docs]); probe.process()
        if not getattr(probe.nb, 'has_docs_', True): return []    # no API docs: the docs build runs none of its cells
        NBProcessor(nb_path, procs=[_chk]).process()
    except Exception as e: return [f'{_rel(nb_path)}: cannot scan cells ({type(e).__name__}: {e})']
    return [f'{_rel(nb_path)}: cell {i} mixes imports with other code; the docs build runs it without the test '
            f'cells before it (put the import in its own cell)' for i in found]

# ---------------------------------------------------------------------------------------------- config + sidebar
def _yaml(path):
    import yaml
    return yaml.safe_load(Path(path).read_text(encoding='utf-8')) or {}

def _sidebar_entries(node, out):
    if isinstance(node, str): out.append(node)
    elif isinstance(node, list):
        for x in node: _sidebar_entries(x, out)
    elif isinstance(node, dict):
        for k in ('href', 'file'):
            if isinstance(node.get(k), str): out.append(node[k])
        if 'contents' in node: _sidebar_entries(node['contents'], out)
    return out

def sidebar_entries(nbs=NBS) -> list:
    "Every file the sidebar links to (sidebar.yml and _quarto.yml's website.sidebar)"
    out = []
    for f in ('sidebar.yml', '_quarto.yml'):
        if not (nbs/f).exists(): continue
        try: sb = (_yaml(nbs/f).get('website') or {}).get('sidebar')
        except Exception: continue
        for s in (sb if isinstance(sb, list) else [sb]):
            if isinstance(s, dict) and 'contents' in s: _sidebar_entries(s['contents'], out)
    return out

def config_problems(nbs=NBS) -> list:
    "The quarto config files parse, and the files they name exist"
    res = []
    for f in ('_quarto.yml', 'nbdev.yml', 'sidebar.yml'):
        if not (nbs/f).exists(): res.append(f'{_rel(nbs/f)} is missing'); continue
        try: _yaml(nbs/f)
        except Exception as e: res.append(f'{_rel(nbs/f)} does not parse: {e}')
    if res or not (nbs/'_quarto.yml').exists(): return res
    q = _yaml(nbs/'_quarto.yml')
    meta = q.get('metadata-files') or []
    for m in ([meta] if isinstance(meta, str) else meta):
        if not (nbs/m).exists(): res.append(f"_quarto.yml: metadata-files entry '{m}' is not in {_rel(nbs)}/")
    for fmt in (q.get('format') or {}).values():
        css = fmt.get('css') if isinstance(fmt, dict) else None
        for c in ([css] if isinstance(css, str) else css or []):
            if not (nbs/c).exists(): res.append(f"_quarto.yml: css file '{c}' is not in {_rel(nbs)}/")
    return res

def sidebar_problems(nbs=NBS, nb_files=None) -> list:
    "Every sidebar entry exists, and every notebook is in the sidebar"
    entries = sidebar_entries(nbs)
    res = [f"sidebar entry '{e}' does not exist in {_rel(nbs)}/" for e in entries
           if '*' not in e and e != 'auto' and not re.match(r'^[a-z]+://', e) and not (nbs/e).exists()]
    listed = {str(Path(e)) for e in entries}
    globs = [e for e in entries if '*' in e]
    for nb in (notebooks(nbs) if nb_files is None else nb_files):
        rel = Path(nb).resolve().relative_to(nbs.resolve())
        if 'auto' in entries or str(rel) in listed or any(rel.match(g) for g in globs): continue
        res.append(f'{_rel(nb)} is not in the sidebar (nbs/sidebar.yml)')
    return res

def regenerate_config(write=False) -> list:
    "Run nbdev's refresh_quarto_yml and nbdev_sidebar; without `write`, keep the committed files and report drift"
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.config import get_config
    res, saved = [], {f: (NBS/f).read_bytes() if (NBS/f).exists() else None for f in ('_quarto.yml', 'nbdev.yml')}
    refresh_quarto_yml()
    for f, old in saved.items():
        new = (NBS/f).read_bytes() if (NBS/f).exists() else None
        if new == old or write: continue
        res.append(f'nbs/{f} is out of date with settings.ini (refresh_quarto_yml changes it): run '
                   f'`python tools/check_docs.py --write` and commit it')
        if old is None: (NBS/f).unlink()
        else: (NBS/f).write_bytes(old)
    if get_config().custom_sidebar: return res        # nbdev_sidebar would not touch a custom sidebar
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): nbdev_sidebar.__wrapped__(printit=True)
    new, sb = buf.getvalue(), NBS/'sidebar.yml'
    old = sb.read_text(encoding='utf-8') if sb.exists() else None
    if old is not None and new.strip() == old.strip(): return res
    if write: nbdev_sidebar.__wrapped__()
    else: res.append('nbs/sidebar.yml is not what nbdev_sidebar generates from the notebooks (custom_sidebar = False): '
                     'run `python tools/check_docs.py --write` and commit it')
    return res

# ---------------------------------------------------------------------------------------------- docstrings
def _auto_doc(obj):
    "True when a class docstring is the one dataclasses/namedtuple write from the signature"
    d = obj.__dict__.get('__doc__')
    return bool(d) and d.startswith(obj.__name__ + '(')

def _is_patch(f):
    try: src = inspect.getsource(f).lstrip()
    except (OSError, TypeError): return False
    return bool(re.match(r'@(fastcore\.basics\.)?patch\b', src))

def docstring_problems(modules) -> list:
    "Public functions/classes in each module's `__all__`, and public `@patch` methods on those classes, need a docstring"
    res = []
    for mod in modules:
        for name in getattr(mod, '__all__', []):
            obj = getattr(mod, name, None)
            if obj is None: res.append(f'{mod.__name__}.{name} is in __all__ but not defined'); continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue
            if getattr(obj, '__module__', mod.__name__) != mod.__name__: continue  # re-export: checked where defined
            doc = obj.__dict__.get('__doc__') if inspect.isclass(obj) else obj.__doc__
            if not (doc or '').strip() or (inspect.isclass(obj) and _auto_doc(obj)):
                res.append(f'{mod.__name__}.{name} ({"class" if inspect.isclass(obj) else "function"}) has no docstring')
            if not inspect.isclass(obj): continue
            for mname, m in vars(obj).items():
                if mname.startswith('_'): continue
                f = m.fget if isinstance(m, property) else getattr(m, '__func__', m)
                if inspect.isfunction(f) and _is_patch(f) and not (f.__doc__ or '').strip():
                    res.append(f'{mod.__name__}.{name}.{mname} (@patch method) has no docstring')
    return res

def library_modules(lib=ROOT/'cvlue_nb'):
    "Import every public module of the library: (modules, problems)"
    mods, res = [], []
    for f in sorted(Path(lib).rglob('*.py')):
        parts = f.relative_to(Path(lib).parent).with_suffix('').parts
        if any(p.startswith('_') for p in parts): continue
        name = '.'.join(parts)
        try: mods.append(importlib.import_module(name))
        except Exception as e: res.append(f'cannot import {name}: {type(e).__name__}: {e}')
    return mods, res

# ---------------------------------------------------------------------------------------------- README
def readme_problems(root=ROOT) -> list:
    "README.md must be what tools/make_readme.py renders from nbs/index.ipynb"
    spec = importlib.util.spec_from_file_location('make_readme', Path(root)/'tools'/'make_readme.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    readme = Path(root)/'README.md'
    if not readme.exists(): return ['README.md is missing: run `python tools/make_readme.py`']
    if readme.read_text(encoding='utf-8') != mod.render_readme(Path(root)/'nbs'/'index.ipynb'):
        return ['README.md does not match nbs/index.ipynb: run `python tools/make_readme.py`']
    return []

# ---------------------------------------------------------------------------------------------- docs processing
def _cause(e):
    c = e.__cause__ or e.__context__
    return f' -> {type(c).__name__}: {c}' if c is not None else ''

def _first_line(e):
    return str(e).strip().split('\n')[0]

def _code(src):
    "Source without directive lines (nbdev may rewrite those) and surrounding blank lines"
    return '\n'.join(l for l in src.split('\n') if not re.match(r'\s*#\s*\|', l)).strip()

def _where(e, nb):
    "Name the failing cell by its index in the committed notebook (nbdev's index counts the cells it inserted)"
    m = re.match(r'Error(?: in notebook: .*?)? in cell \d+ :\n(.*)', str(e), re.S)
    if not m: return _first_line(e)
    src = _code(m.group(1))
    idx = [i for i, c in enumerate(_load(nb).get('cells', [])) if _code(''.join(c.get('source', []))) == src]
    line = (src.split('\n') or [''])[0][:80]
    if not idx and line.startswith('show_doc('): return f'rendering the API docs failed: `{line}` (a cell nbdev adds after an export)'
    return f"a docs cell failed: cell {idx[0] if idx else '?'} (`{line}`)"

def process_one(nb, dst) -> list:
    "Process one notebook for the docs, as proc_nbs does (in this process); the problem if it fails"
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try: nbdev.serve_drv.main((Path(nb), Path(dst), FilterDefaults))
    except Exception as e:
        os.environ.pop('IN_TEST', None)    # serve_drv.main leaves it set when a notebook fails
        return [f'{_rel(nb)}: docs processing failed, {_where(e, nb)}{_cause(e)}']
    return []

def process_notebooks(nb_files, workers=0) -> tuple:
    "nbdev.serve.proc_nbs(force=True) into _proc/; on failure each unprocessed notebook is retried alone to name every failure"
    import nbdev.serve
    from nbdev.config import get_config
    cache, res = get_config().config_path/'_proc', []
    try: nbdev.serve.proc_nbs(force=True, n_workers=workers)
    except Exception as e:
        os.environ.pop('IN_TEST', None)     # serve_drv.main leaves it set when a notebook fails in this process
        first = e
    else: first = None
    if first is not None:
        for nb in nb_files:
            dst = cache/Path(nb).resolve().relative_to(NBS.resolve())
            if dst.exists(): continue
            res += process_one(nb, dst)
        if not res: res.append(f'docs processing (proc_nbs) failed: {_first_line(first)}{_cause(first)}')
    return cache, res

def processed_problems(nb_files, cache, skip_outputs=()) -> list:
    "Every notebook has a processed copy with a title in its front matter and no error outputs"
    import yaml
    res, skip = [], {Path(p).resolve() for p in skip_outputs}
    for nb in nb_files:
        rel = Path(nb).resolve().relative_to(NBS.resolve())
        p = Path(cache)/rel
        if not p.exists(): continue     # already reported by process_notebooks
        cells = _load(p).get('cells', [])
        fm = {}
        if cells and cells[0].get('cell_type') == 'raw':
            src = ''.join(cells[0].get('source', []))
            m = re.match(r'\s*---\n(.*?)\n---', src, re.S)
            try: fm = yaml.safe_load(m.group(1)) if m else {}
            except Exception: fm = {}
        if not str((fm or {}).get('title') or '').strip(): res.append(f'_proc/{rel}: the processed page has no title in its front matter')
        if Path(nb).resolve() not in skip: res += output_problems(p, label=f'_proc/{rel}')
    return res

# ---------------------------------------------------------------------------------------------- main
def static_problems(nb_files=None):
    "The checks that execute nothing: (problems, warnings, counts)"
    nb_files = notebooks() if nb_files is None else nb_files
    probs = config_problems() + sidebar_problems(NBS, nb_files)
    warns = []
    for nb in nb_files:
        probs += title_problems(nb) + output_problems(nb)
        warns += mixed_import_warnings(nb)
    mods, imp = library_modules()
    probs += imp + docstring_problems(mods) + readme_problems()
    n_sym = sum(len(getattr(m, '__all__', [])) for m in mods)
    return probs, warns, dict(notebooks=len(nb_files), modules=len(mods), symbols=n_sym)

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python tools/check_docs.py', description='Check the docs build without quarto.')
    p.add_argument('--static', action='store_true', help='skip the docs processing (no notebook code runs)')
    p.add_argument('--write', action='store_true', help='keep the regenerated nbs/nbdev.yml and nbs/sidebar.yml')
    p.add_argument('--workers', type=int, default=0, help='proc_nbs worker processes (0: serial, in this process)')
    a = p.parse_args(argv)
    t0 = time.time()
    os.chdir(ROOT)
    warnings.filterwarnings('ignore', message='Found cells containing imports')   # reported per notebook below
    probs = regenerate_config(write=a.write)
    nb_files = notebooks()
    sp, warns, n = static_problems(nb_files)
    probs += sp
    t_proc, n_proc = None, 0
    if not a.static:
        t1 = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            cache, pp = process_notebooks(nb_files, workers=a.workers)
        t_proc = time.time() - t1
        n_proc = sum((cache/Path(nb).resolve().relative_to(NBS.resolve())).exists() for nb in nb_files)
        flagged = [nb for nb in nb_files if output_problems(nb)]     # their committed errors are reported already
        probs += pp + processed_problems(nb_files, cache, skip_outputs=flagged)
    for w in warns: print(f'warning: {w}')
    for q in probs: print(f'PROBLEM: {q}')
    proc = f', {n_proc}/{n["notebooks"]} processed by proc_nbs in {t_proc:.1f} s' if t_proc is not None else ' (static only)'
    print(f'check_docs: {n["notebooks"]} notebooks{proc}, {n["symbols"]} exported names in {n["modules"]} modules, '
          f'{len(warns)} warnings, {len(probs)} problems, {time.time() - t0:.1f} s')
    return 1 if probs else 0

if __name__ == '__main__': sys.exit(main())
