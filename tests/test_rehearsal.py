"""The dress rehearsal (issue 13, item 7): the user guide's commands on data in the organisers' real formats.

`tutorials/real_data` (the user guide) is the recipe for a real CVLUE job. Here its commands run as written, as
subprocesses, with `model=tiny` and a few items instead of the real data and the base model:

1. a data root in the organisers' formats, laid out as the guide's section 2 says (`write_real_format_root`): written
   by the synthetic generator, so it exists on a fresh clone. Training, validation and test files of ITR/VQA/VG in
   the official shapes, test inputs and gold files, `VQA/answer_list.json`, images under the organisers' tree
   (`images/train-valid/{A|B}/{nn-category}/…` for training and validation, `images/val/…` for the test split);
   VD's training and validation files as the organisers ship them: a bare list of dialogs, question/answer ids,
   100 answer options per round, images named `pics/mosaiced-nocopy/…`, the id → text tables in `VD/tables.json`;
2. `python -m cvlue_nb.data validate` on every file (section 3);
3. `python -m cvlue_nb.generate` for the four tasks: scene backend, rules rewriter, VD reusing ITR (section 5);
4. `torchrun --nproc_per_node 2 -m cvlue_nb.train --data cvlue` for the four tasks, AGI on and off, `--init` a tiny
   checkpoint in the CCLM layout and `--tokenizer` a saved tokenizer (section 6); validation and test metrics in
   `metrics.json`;
5. `python -m cvlue_nb.infer` (ITR under torchrun, VQA, VD) on trained models: the same submission files and
   scores as the run (section 7);
6. `python -m cvlue_nb.evaluate` on every written submission, test and validation (gold: the training-format
   `val.json`): its scores equal the run's `metrics.json` (section 7).

Where the real sample is present (`../shared/cvlue_sample`, or `$CVLUE_SAMPLE`) the same steps run on it too, read in
place: the guide's layout step links it into a data root (symlinks, never copies), `validate` checks every file,
`evaluate` scores the organisers' own submission files, and a tiny VG job (answer-guided images drawn on the real
images) trains, infers and is evaluated. Without the sample that part is skipped with one line.

`check_run_metrics` is the one place that says what a finished run's `metrics.json` must hold and compares it with
`evaluate` on the run's files; every run above, the sample's included, goes through it.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_rehearsal.py --durations=0   (about 3 minutes on 2 CPU cores)
"""
import json, os, random, shutil, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest, torch
from cvlue_nb import synth
from cvlue_nb.core import read_json, atomic_write_json
from cvlue_nb.data import write_vd_organiser_format
from cvlue_nb.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
TASKS = ('itr', 'vqa', 'vd', 'vg')
VD_MAP = 'pics/mosaiced-nocopy=images/train-valid'   # the user guide's path map for the organisers' VD files
# the guide's `--data cvlue` runs, made tiny: 2 steps of 4 items on 2 processes, 32 px, no workers
TINY = ['model=tiny', 'image_res=32', 'batch_size=4', 'accumulate=1', 'max_steps=2', 'num_workers=0',
        'batch_size_test=8', 'log_every=1']
TASK_SETTINGS = {'itr': ['k_test=4'], 'vqa': ['vqa_k=8'], 'vg': [],
                 'vd': ['context_max_len=96', 'vd_tables=VD/tables.json', f'path_map={VD_MAP}']}   # as in the guide
SUBMISSIONS = {'itr': ('i2t_submit.json', 't2i_submit.json'), 'vqa': ('submit_VQA.json',), 'vd': ('submit_VD.json',),
               'vg': ('submit_VG.json',)}


def run(*cmd, timeout=240) -> subprocess.CompletedProcess:
    "`python -m …` (or `torchrun …`) as the guide writes it, in the repository root"
    args = [sys.executable, '-m', 'torch.distributed.run', '--standalone', *cmd[1:]] if cmd[0] == 'torchrun' else \
           [sys.executable, *cmd]
    return subprocess.run(list(map(str, args)), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f'{" ".join(p.args[1:])}\nexit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}'
    return p


def folder_of(task: str) -> str: return get_task(task).folder   # IC, VQA, VD, VG


def last_json(p: subprocess.CompletedProcess) -> dict:
    "The scores `evaluate` and `infer` print as their last line"
    return json.loads(ok(p).stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ the data root
def organiser_image_path(p: str) -> str:
    "`images/<split>/<split>_0000k.png` → `images/{train-valid|val}/{A|B}/{nn-category}/{A|B}-nn-k.png`, as the organisers"
    split, k = p.split('/')[1], int(Path(p).stem.rsplit('_', 1)[1]) + {'train': 0, 'val': 1000, 'test': 2000}[p.split('/')[1]]
    ab, nn = 'AB'[k % 2], 1 + k % 3
    return f"images/{'val' if split == 'test' else 'train-valid'}/{ab}/{nn}-{('circle', 'square', 'diamond')[nn - 1]}/{ab}-{nn}-{k}.png"


def _paths(o, f):
    "`o` with every image path (an `image` field, or a string in a list such as `images.json`) rewritten by `f`"
    if isinstance(o, dict): return {k: f(v) if k == 'image' else _paths(v, f) for k, v in o.items()}
    if isinstance(o, list): return [f(v) if isinstance(v, str) and v.startswith('images/') else _paths(v, f) for v in o]
    return o


def with_options(vd: dict, seed: int = 0) -> dict:
    "VD dialogs whose every round offers 100 distinct answer ids, the gold among them (as the organisers' training file)"
    ids = sorted(map(int, vd['id2answer']))
    for i, d in enumerate(vd['dialogs']):
        rng = random.Random(seed * 1000 + i)
        for r in d['dialog']:
            r['answer_options'] = rng.sample([a for a in ids if a != r['answer']], 99)
            r['answer_options'].insert(rng.randrange(100), r['answer'])
    return vd


def write_real_format_root(d: Path, n_train=6, n_val=2, n_test=3, size=32, seed=0) -> Path:
    "A data root in the organisers' formats and the guide's layout, from the synthetic generator (see the module doc)"
    src = d.parent/f'{d.name}_synth'
    synth.generate(src, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, size=size, progress=False)
    for png in sorted((src/'images').rglob('*.png')):
        dst = d/organiser_image_path(png.relative_to(src).as_posix()); dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(png, dst)
    for f in sorted(src.glob('[IV]*/*.json')): atomic_write_json(d/f.parent.name/f.name, _paths(read_json(f), organiser_image_path))
    shutil.rmtree(src)
    # VD train/val in the organisers' shape; one tables file for all splits, as theirs (ids shared across dialogs)
    vd, val = read_json(d/'VD'/'train.json'), read_json(d/'VD'/'val.json')
    for f in ('val', 'test'):
        for t in ('id2question', 'id2answer'): vd[t].update(read_json(d/'VD'/f'{f}.json')[t])
    for name, data in (('train', with_options(vd, seed)), ('val', val)):
        org = write_vd_organiser_format(data, d/'VD', name=name)
        assert org.path_map == VD_MAP, org.path_map
    (d/'VD'/'train_tables.json').replace(d/'VD'/'tables.json')  # the guide's name; val.json finds it beside itself
    (d/'VD'/'val_tables.json').unlink()
    return d


def _texts(o):
    if isinstance(o, str): yield o
    elif isinstance(o, dict):
        for k, v in o.items():
            if isinstance(v, int) and not isinstance(v, bool): yield k    # the answer list: answer → id
            else: yield from _texts(v)
    elif isinstance(o, list):
        for v in o: yield from _texts(v)


def write_init_and_tokenizer(data: Path, out: Path) -> tuple[Path, Path]:
    "`$CKPT` of the guide, tiny: a CCLM-layout checkpoint (`cclm_tiny.th`) and a tokenizer folder matching its vocabulary"
    from cvlue_nb.checkpoint import tiny_cclm_state_dict
    from cvlue_nb.model import build_char_tokenizer
    texts = [s for f in sorted(data.glob('*/*.json')) for s in _texts(read_json(f)) if not s.startswith(('images/', 'pics/'))]
    tok = build_char_tokenizer(texts); tok.save_pretrained(str(out/'tokenizer'))
    torch.save({'model': tiny_cclm_state_dict(40, 0, vocab_size=len(tok))}, out/'cclm_tiny.th')  # 40 px "pretraining"
    return out/'cclm_tiny.th', out/'tokenizer'


# ------------------------------------------------------------------------------------------------ what a run holds
def evaluate_files(task: str, gold: Path, sub: Path) -> dict:
    "`python -m cvlue_nb.evaluate` on the submission files in `sub`, as the guide's section 7 (VQA: loose and strict)"
    files = SUBMISSIONS[task]
    args = ['--i2t', sub/files[0], '--t2i', sub/files[1]] if task == 'itr' else ['--pred', sub/files[0]]
    got = last_json(run('-m', 'cvlue_nb.evaluate', task, '--gold', gold, *args))
    if task == 'vqa':
        s = last_json(run('-m', 'cvlue_nb.evaluate', task, '--gold', gold, *args, '--strict'))
        got.update(acc_strict=s['acc'], n_match_strict=s['n_match'])
    return got


def same_scores(evaluated: dict, metrics: dict):
    "Every score `evaluate` printed is in the run's metrics, with the same value"
    assert evaluated and {k: metrics.get(k) for k in evaluated} == evaluated, (evaluated, metrics)


def check_run_metrics(run: Path, task: str, test_gold: Path, val_gold: Path | None = None, steps: int = 2) -> dict:
    """What a finished run's `metrics.json` must hold, and that its scores are what `evaluate` gives on the files the
    run wrote; the one place for every metric a run reports: the test split (`metrics`, files in `submission/`) and the
    validation split (`val`, files in `val/`, scored against the training-format `val_gold`; None: the run had no
    validation file). Returns the test metrics."""
    m = read_json(run/'metrics.json')
    assert (m['task'], m['data'], m['step'], m['world_size']) == (task, 'cvlue', steps, 2), m
    assert all(v == v for v in m['final_losses'].values()), m['final_losses']                   # finite, no NaN
    cols = get_task(task).columns                                                               # the paper's columns
    for split in ('metrics', 'val') if val_gold else ('metrics',):
        assert set(cols) <= set(m[split]) and all(0 <= m[split][k] <= 1 for k in cols), (split, m[split])
    same_scores(evaluate_files(task, test_gold, run/'submission'), m['metrics'])
    if val_gold is None: assert (m['val'], m['val_file']) == ({}, None), (m['val'], m['val_file'])
    else:
        assert m['val_file'] == str(val_gold) and m['val_history'][-1]['step'] == steps, (m['val_file'], m['val_history'])
        same_scores(evaluate_files(task, val_gold, run/'val'), m['val'])
    return m['metrics']


# ------------------------------------------------------------------------------------------------ fixtures
def run_all(cmds: dict, workers: int = 2) -> dict:
    "Run commands (name → arguments of `run`) `workers` at a time: a 2-process torchrun job keeps about 1.2 cores busy"
    with ThreadPoolExecutor(workers) as ex: futures = {k: ex.submit(run, *c) for k, c in cmds.items()}
    return {k: f.result() for k, f in futures.items()}


@pytest.fixture(scope='module')
def guide(tmp_path_factory):
    "The guide's shell variables: DATA (the data root), AGI (answer-guided images), CKPT (checkpoint, tokenizer), RUNS"
    base = tmp_path_factory.mktemp('rehearsal')
    data = write_real_format_root(base/'cvlue')
    (base/'ckpt').mkdir(); init, tok = write_init_and_tokenizer(data, base/'ckpt')
    return dict(DATA=data, AGI=base/'agi', INIT=init, TOKENIZER=tok, RUNS=base/'runs')


@pytest.fixture(scope='module')
def agi(guide):
    "Section 5: the answer-guided images of the four tasks (ITR first: VD reuses its images)"
    D, A = guide['DATA'], guide['AGI']
    cmds = {'itr': ['--backend', 'scene', '--size', 32],
            'vqa': ['--backend', 'scene', '--size', 32, '--rewriter', 'rules'],
            'vd': ['--backend', 'scene', '--size', 32, '--rewriter', 'rules', '--reuse-itr', A/'itr',
                   '--vd-tables', D/'VD'/'tables.json', '--path-map', VD_MAP],
            'vg': []}
    gen = lambda *tasks: run_all({t: ('-m', 'cvlue_nb.generate', '--task', t, '--data', D, '--out', A/t, *cmds[t], '--no-progress')
                                  for t in tasks})
    for p in [*gen('itr', 'vqa').values(), *gen('vd', 'vg').values()]: ok(p)
    return A


@pytest.fixture(scope='module')
def runs(guide, agi) -> dict:
    "Section 6: one `torchrun … -m cvlue_nb.train` per (task, AGI arm); (task, agi) → (run folder, finished process)"
    out = {(t, a): guide['RUNS']/f"{t}-{'agi' if a else 'base'}" for t in TASKS for a in (True, False)}
    cmds = {(t, a): ('torchrun', '--nproc_per_node', 2, '-m', 'cvlue_nb.train', '--task', t, '--data', 'cvlue',
                     '--data-root', guide['DATA'], *(['--agi-dir', agi/t] if a else ['agi=false']), '--init', guide['INIT'],
                     '--tokenizer', guide['TOKENIZER'], '--out', out[t, a], *TINY, *TASK_SETTINGS[t]) for t, a in out}
    return {k: (out[k], p) for k, p in run_all(cmds).items()}


INFER = ('itr', 'vqa', 'vd')

@pytest.fixture(scope='module')
def inferred(runs, guide, tmp_path_factory) -> dict:
    "Section 7: `infer` on each AGI model of INFER (ITR under torchrun, as the guide); task → (out folder, process)"
    base = tmp_path_factory.mktemp('infer')
    cmds = {t: (*(('torchrun', '--nproc_per_node', 2) if t == 'itr' else ()), '-m', 'cvlue_nb.infer', '--task', t,
                '--model', runs[t, True][0]/'model', '--data', guide['DATA'], '--out', base/t) for t in INFER}
    return {t: (base/t, p) for t, p in run_all(cmds).items()}


# ------------------------------------------------------------------------------------------------ the rehearsal
def test_the_root_has_the_organisers_formats(guide):
    D = guide['DATA']
    vd = read_json(D/'VD'/'train.json')
    assert isinstance(vd, list) and all(d['image'].startswith('pics/mosaiced-nocopy/') for d in vd)
    r = vd[0]['dialog'][0]
    assert isinstance(r['question'], int) and len(set(r['answer_options'])) == 100 and r['answer'] in r['answer_options']
    assert set(read_json(D/'VD'/'tables.json')) == {'id2question', 'id2answer'} and isinstance(read_json(D/'VD'/'val.json'), list)
    assert set(read_json(D/'VD'/'test.json')) == {'dialogs', 'id2question', 'id2answer'} and 'data' in read_json(D/'VD'/'test_gold.json')
    assert read_json(D/'IC'/'train.json')[0]['image'].startswith('images/train-valid/')
    assert all(p.startswith('images/val/') for p in read_json(D/'IC'/'test_images.json'))
    assert all(r['answer'] == '' for r in read_json(D/'VQA'/'test.json')) and all(r['bbox'] == [] for r in read_json(D/'VG'/'test.json'))
    for task in ('IC', 'VQA', 'VD', 'VG'): assert (D/task/'val.json').is_file()
    assert isinstance(read_json(D/'VQA'/'answer_list.json'), dict)


def test_validate(guide):
    "Section 3: every file of the root is clean, images decoded; the VD files with the guide's tables and path map"
    D = guide['DATA']
    files = {'itr': ['IC/train.json', 'IC/val.json', 'IC/test_images.json', 'IC/test_captions.json', 'IC/test_gold.json'],
             'vqa': ['VQA/train.json', 'VQA/val.json', 'VQA/test.json', 'VQA/test_gold.json', 'VQA/answer_list.json'],
             'vd': ['VD/train.json', 'VD/val.json', 'VD/test.json', 'VD/test_gold.json', 'VD/tables.json'],
             'vg': ['VG/train.json', 'VG/val.json', 'VG/test.json', 'VG/test_gold.json']}
    for task, fs in files.items():
        extra = ['--vd-tables', D/'VD'/'tables.json', '--path-map', VD_MAP] if task == 'vd' else []
        p = ok(run('-m', 'cvlue_nb.data', 'validate', '--task', task, *[D/f for f in fs], '--image-root', D, *extra))
        assert p.stdout.count(': clean') == len(fs), p.stdout
    no_map = run('-m', 'cvlue_nb.data', 'validate', '--task', 'vd', D/'VD'/'train.json', '--image-root', D)
    assert no_map.returncode == 1 and 'image file not found' in no_map.stdout   # the pics/… paths need the map


def test_generate(agi):
    for task in TASKS:
        s = read_json(agi/task/'generate_summary.json')
        assert s['failed'] == 0 and s['generated'] + s['reused'] == s['total'] > 0, (task, s)
    assert read_json(agi/'vd'/'generate_summary.json')['reused'] > 0                      # --reuse-itr
    assert read_json(agi/'vd'/'generate_config.json')['path_map'] == VD_MAP


@pytest.mark.parametrize('use_agi', [True, False], ids=['agi', 'base'])
@pytest.mark.parametrize('task', TASKS)
def test_train_then_evaluate_its_submission(task, use_agi, runs, guide):
    "Sections 6 and 7: the run's metrics are what `evaluate` gives on the submission files it wrote"
    out, p = runs[task, use_agi]
    ok(p)
    assert 'preflight: the inputs and their images checked' in p.stdout and 'Checkpoint import' in p.stdout
    folder = guide['DATA']/folder_of(task)
    check_run_metrics(out, task, folder/'test_gold.json', folder/'val.json')
    assert ('kl' in read_json(out/'metrics.json')['final_losses']) == use_agi
    if task == 'vqa': assert 'ranked against the training answers' not in p.stdout   # VQA/answer_list.json of the layout


@pytest.mark.parametrize('task', INFER)
def test_infer_writes_what_the_run_wrote(task, inferred, runs):
    "Section 7: `infer` on a trained model writes the run's submission files and scores (the run's settings are its defaults)"
    (sub, p), run_dir = inferred[task], runs[task, True][0]
    assert last_json(p) == read_json(run_dir/'metrics.json')['metrics']
    for f in SUBMISSIONS[task]: assert read_json(sub/f) == read_json(run_dir/'submission'/f), f
    assert f'settings of the run {run_dir}:' in p.stdout


# ------------------------------------------------------------------------------------------------ the real sample
@pytest.fixture(scope='module')
def sample_root(sample_dir, tmp_path_factory):
    "The guide's layout step on the real sample: symlinks into a data root (the files are read in place, never copied)"
    if sample_dir is None: return None
    d = tmp_path_factory.mktemp('sample_data')
    (d/'VG').mkdir(); (d/'VG'/'train.json').symlink_to(sample_dir/'example'/'VG'/'example.json')
    (d/'images').symlink_to(sample_dir/'images', target_is_directory=True)
    return d


@pytest.mark.sample('validate on every real sample file, and evaluate on the organisers\' own submission files')
def test_sample_validate_and_evaluate(sample):
    ex, te = sample/'example', sample/'test_example'
    files = {'itr': [ex/'IC'/'example.json'], 'vqa': [ex/'VQA'/'example.json', ex/'VQA'/'answer_list.json'],
             'vg': [ex/'VG'/'example.json']}
    for task, fs in files.items():    # training-style files with their real images, decoded
        p = ok(run('-m', 'cvlue_nb.data', 'validate', '--task', task, *fs, '--image-root', sample))
        assert p.stdout.count(': clean') == len(fs), p.stdout
    tests = {'itr': ['images.json', 'captions.json', 'gold.json'], 'vqa': ['test_VQA.json', 'gold.json'],
             'vd': ['test_VD.json', 'gold.json'], 'vg': ['test_VG.json', 'gold.json']}
    for task, fs in tests.items():    # test inputs and gold files (their images are not in the sample)
        p = ok(run('-m', 'cvlue_nb.data', 'validate', '--task', task, *[te/folder_of(task)/f for f in fs]))
        assert p.stdout.count(': clean') == len(fs), p.stdout
    for task in TASKS:
        scores = evaluate_files(task, te/folder_of(task)/'gold.json', te/folder_of(task))
        assert scores and all(isinstance(v, (int, float)) for v in scores.values()), scores


@pytest.mark.sample('a tiny VG job on the real sample laid out as the guide says: generate, torchrun train, infer, evaluate')
def test_sample_vg_job(sample, sample_root, tmp_path):
    D, agi, out = sample_root, tmp_path/'agi', tmp_path/'run'
    init, tok = write_init_and_tokenizer(D, tmp_path)          # a vocabulary of the real texts
    ok(run('-m', 'cvlue_nb.data', 'validate', '--task', 'vg', D/'VG'/'train.json', '--image-root', D))   # through the links
    ok(run('-m', 'cvlue_nb.generate', '--task', 'vg', '--data', D, '--out', agi, '--no-progress'))
    # the sample has no test images: the training file is also the test split (a training-format file is its own gold)
    ok(run('torchrun', '--nproc_per_node', 2, '-m', 'cvlue_nb.train', '--task', 'vg', '--data', 'cvlue', '--data-root', D,
           '--agi-dir', agi, '--init', init, '--tokenizer', tok, '--out', out, *TINY,
           'test_file=VG/train.json'))
    metrics = check_run_metrics(out, 'vg', D/'VG'/'train.json')   # the training file is the gold too
    assert metrics['n'] == len(read_json(D/'VG'/'train.json'))
    res = last_json(run('-m', 'cvlue_nb.infer', '--task', 'vg', '--model', out/'model', '--data', D, '--out', tmp_path/'infer',
                        '--records', D/'VG'/'train.json'))
    assert res == metrics and read_json(tmp_path/'infer'/'submit_VG.json') == read_json(out/'submission'/'submit_VG.json')
