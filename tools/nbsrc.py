"""Developer tool: write notebooks as plain text, and run them in place so they are committed with outputs.

    python tools/nbsrc.py to-py  nbs/01_data.ipynb  draft.py     # notebook -> percent-format text
    python tools/nbsrc.py to-nb  draft.py  nbs/01_data.ipynb     # percent-format text -> notebook (outputs dropped)
    python tools/nbsrc.py run    nbs/01_data.ipynb [--flags slow] # execute top to bottom, store outputs, nbdev_clean it
    python tools/nbsrc.py ids    nbs/01_data.ipynb                # give cells deterministic ids (run does this too)

Percent format: a line `# %%` starts a code cell, `# %% [markdown]` a markdown cell (its lines start with `# `),
`# %% [raw]` a raw cell. Cells marked `#| eval: false`, cells calling `nbdev_export(`, and cells with a test
flag from settings.ini that is not in --flags are not executed by `run` (the same rules as nbdev_test).
"""
import hashlib, json, os, re, sys, argparse
from pathlib import Path

HEADER = re.compile(r'^# %%(?: \[(markdown|raw)\])?\s*$')

def nb_to_py(nb_path, py_path):
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    out = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code': out.append('# %%\n' + src)
        elif c['cell_type'] == 'markdown':
            out.append('# %% [markdown]\n' + '\n'.join(('# ' + l) if l else '#' for l in src.split('\n')))
        else: out.append('# %% [raw]\n' + '\n'.join(('# ' + l) if l else '#' for l in src.split('\n')))
    Path(py_path).write_text('\n\n'.join(out) + '\n', encoding='utf-8')

def _uncomment(lines):
    return [l[2:] if l.startswith('# ') else ('' if l == '#' else l) for l in lines]

def _cell_id(i, src):
    "Deterministic cell id: nbdev_export writes cell ids into cvlue_nb/, so random ids would make the export drift"
    return hashlib.sha1(f'{i}:{src}'.encode('utf-8')).hexdigest()[:8]

def ensure_ids(nb_path):
    "Give every cell of a notebook a deterministic id (nbformat 4.5) if it has none"
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    changed = False
    for i, c in enumerate(nb['cells']):
        if not c.get('id'): c['id'] = _cell_id(i, ''.join(c['source'])); changed = True
    if nb.get('nbformat_minor', 0) < 5: nb['nbformat_minor'] = 5; changed = True
    if changed: Path(nb_path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    return changed

def py_to_nb(py_path, nb_path):
    text = Path(py_path).read_text(encoding='utf-8')
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        lines = buf[:]
        while lines and not lines[-1].strip(): lines.pop()
        if kind != 'code': lines = _uncomment(lines)
        src = '\n'.join(lines)
        cell = {'cell_type': kind, 'id': _cell_id(len(cells), src), 'metadata': {}, 'source': src.splitlines(keepends=True)}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    for line in text.split('\n'):
        m = HEADER.match(line)
        if m:
            flush(); kind, buf = (m.group(1) or 'code'), []
        else: buf.append(line)
    flush()
    nb = {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    Path(nb_path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')

def _skip_flags(force):
    from nbdev.config import get_config
    return set(get_config().tst_flags.split()) - set(force)

def run_nb(nb_path, force=()):
    "Execute a notebook in its own folder (as nbdev_test does), store outputs, then clean it with nbdev_clean."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from nbdev.process import extract_directives
    from nbdev.clean import clean_nb
    nb_path = Path(nb_path).resolve()
    ensure_ids(nb_path)
    skip = _skip_flags(force)
    nb = read_nb(nb_path)
    def preproc(cell):
        if cell.cell_type != 'code': return True
        d = extract_directives(cell, remove=False)
        if 'nbdev_export(' in cell.source: return True
        if d.get('eval:', [''])[0].lower() == 'false': return True
        if skip & set(d): return True
        return False
    os.environ['IN_TEST'] = '1'
    cwd = os.getcwd(); os.chdir(nb_path.parent)
    try:
        shell = CaptureShell(mpl_format='png')  # plain PNG keeps notebooks small
        shell.run_all(nb, exc_stop=True, preproc=preproc)
    finally: os.chdir(cwd)
    clean_nb(nb)
    write_nb(nb, nb_path)
    print(f'ran {nb_path.name}: outputs stored')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('cmd', choices=['to-py', 'to-nb', 'run', 'ids'])
    p.add_argument('src'); p.add_argument('dest', nargs='?')
    p.add_argument('--flags', default='', help='test flags to run anyway, e.g. "slow"')
    a = p.parse_args()
    if a.cmd == 'to-py': nb_to_py(a.src, a.dest)
    elif a.cmd == 'to-nb': py_to_nb(a.src, a.dest)
    elif a.cmd == 'ids': print('ids added' if ensure_ids(a.src) else 'ids present')
    else: run_nb(a.src, a.flags.split())
