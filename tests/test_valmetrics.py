"""Validation metrics during training (issue 13, item 2): the scores a run stores equal what the official scorer
(`python -m cvlue_nb.evaluate`) and `python -m cvlue_nb.infer --split val` give on the same files; the history
survives a kill and resume; validation leaves training alone; torchrun runs validate on every rank and fail fast.

Small runs as in tests/test_train.py (tiny model, 16-image synthetic benchmark) and, for VD, the organisers' shapes
(bare list + tables beside it, `pics/…` image paths) as in tests/test_real_format.py.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_valmetrics.py
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from cvlue_nb import synth
from cvlue_nb.core import read_json, atomic_write_json
from cvlue_nb.data import read_vd, write_vd_organiser_format
from cvlue_nb.train import read_scalars

ROOT = Path(__file__).resolve().parents[1]
# 16 training images × 5 captions / batch 8 = 10 micro-batches per epoch: 12 steps validate at steps 10 and 12
SMALL = ['synth_n_train=16', 'synth_n_test=4', 'synth_size=32', 'image_res=32', 'batch_size=8', 'num_workers=0',
         'k_test=4', 'log_every=1', 'max_steps=12', 'val=true', 'val_every=1', 'ckpt_every=1', 'keep_ckpts=1']
ITR_INFER = ['k_test=4', 'itc_weight=10', 'image_res=32']   # the run's evaluation settings (synth ITR preset)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "One thread, a private cache shared by the tests of this file"
    e = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', CVLUE_NB_CACHE=str(tmp_path_factory.mktemp('cache')))
    for k in ('CVLUE_TEST_KILL_AT_STEP', 'CVLUE_TEST_FAIL_AT_STEP'): e.pop(k, None)
    return e


def run(module, *args, env, timeout=300, **extra):
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], env=dict(env, **extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def last_json(r): return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def itr_run(env, tmp_path_factory):
    "An ITR run that validates after each epoch and at the end: (run folder, metrics.json, stdout)"
    out = tmp_path_factory.mktemp('itr')/'run'
    r = run('cvlue_nb.train', '--task', 'itr', *SMALL, f'out={out}', env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, read_json(out/'metrics.json'), r.stdout


def synth_data(env) -> Path:
    return next(p for p in (Path(env['CVLUE_NB_CACHE'])/'synth').iterdir() if '-16-4-4-32px' in p.name)


def test_itr_history_equals_the_official_scorer(itr_run, env):
    out, m, stdout = itr_run
    assert [h['step'] for h in m['val_history']] == [10, 12] and m['val_history'][0]['epoch'] == 1
    assert m['val'] == {k: v for k, v in m['val_history'][-1].items() if k not in ('epoch', 'step')}
    assert set(m['val']) == set(m['metrics']) == {'i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10'}
    assert m['val_file'] == str(synth_data(env)/'IC'/'val.json')
    files = ['--i2t', out/'val'/'i2t_submit.json', '--t2i', out/'val'/'t2i_submit.json']
    for gold in (out/'val'/'gold.json', synth_data(env)/'IC'/'val.json'):   # the written gold, and the training-format file
        e = run('cvlue_nb.evaluate', 'itr', '--gold', gold, *files, env=env)
        assert e.returncode == 0 and last_json(e) == m['val'], e.stdout + e.stderr
    steps, values = read_scalars(out)['val/i2t_r1']
    assert steps == [10, 12] and values[-1] == pytest.approx(m['val']['i2t_r1'])
    assert 'validation at step 10 (epoch 1' in stdout and '| split | TR R@1 | TR R@5 |' in stdout
    assert '| val |' in stdout and '| test |' in stdout and json.loads(stdout.strip().splitlines()[-1]) == m['metrics']


def test_infer_split_val_scores_the_same(itr_run, env, tmp_path):
    "infer --split val on the training-format IC/val.json: converted the same way, the same scores"
    out, m, _ = itr_run
    i = run('cvlue_nb.infer', '--task', 'itr', '--model', out/'model', '--data', synth_data(env), '--out', tmp_path,
            '--split', 'val', *ITR_INFER, env=env)
    assert i.returncode == 0, i.stderr[-3000:]
    assert last_json(i) == m['val']
    assert read_json(tmp_path/'gold.json') == read_json(out/'val'/'gold.json')


def test_history_survives_kill_and_resume_and_validation_leaves_training_alone(itr_run, env, tmp_path):
    "Killed after the checkpoint of step 11 (after the epoch-1 validation): the resumed run's record equals the uninterrupted one"
    _, ref, _ = itr_run
    out = tmp_path/'kill'
    killed = run('cvlue_nb.train', '--task', 'itr', *SMALL, f'out={out}', env=env, CVLUE_TEST_KILL_AT_STEP='11')
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run('cvlue_nb.train', '--task', 'itr', *SMALL, f'out={out}', 'val_every=5', env=env)  # val settings may change
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = read_json(out/'metrics.json')
    assert m['val_history'] == ref['val_history'] and m['val'] == ref['val'] and m['metrics'] == ref['metrics']
    assert read_scalars(out)['val/t2i_r1'][0] == [10, 12]
    off = run('cvlue_nb.train', '--task', 'itr', *SMALL, 'val=false', f'out={tmp_path/"off"}', env=env)
    assert off.returncode == 0, off.stderr[-3000:]
    o = read_json(tmp_path/'off'/'metrics.json')
    assert (o['val'], o['val_history'], o['val_file']) == ({}, [], None) and 'validation: off (val=false)' in off.stdout
    assert o['final_losses'] == ref['final_losses'] and o['metrics'] == ref['metrics']   # same training with or without


@pytest.fixture(scope='module')
def vd_root(tmp_path_factory):
    "VD/train.json and VD/val.json as the organisers' bare lists with their tables beside them, images named pics/…"
    d = tmp_path_factory.mktemp('vd')
    synth.generate(d, seed=0, n_train=6, n_val=3, n_test=2, size=32, progress=False)
    for split in ('train', 'val'):
        org = write_vd_organiser_format(read_vd(d/'VD'/f'{split}.json'), d/'VD', prefix=f'pics/mosaiced-{split}/', name=split)
        assert org.tables.name == f'{split}_tables.json' and org.path_map == f'pics/mosaiced-{split}=images/{split}'
    return d


MAP = 'pics/mosaiced-train=images/train;pics/mosaiced-val=images/val'


def test_vd_real_format_history_equals_the_official_scorer(vd_root, env, tmp_path):
    "cvlue preset (validation every epoch) on the organisers' VD shapes: one asked round per dialog, scored like evaluate"
    out = tmp_path/'run'
    t = run('cvlue_nb.train', '--task', 'vd', '--data', 'cvlue', '--data-root', vd_root, '--out', out, 'agi=false',
            f'path_map={MAP}', 'model=tiny', 'image_res=32', 'batch_size=8', 'accumulate=1', 'max_steps=8', 'num_workers=0',
            'context_max_len=96', 'batch_size_test=8', env=env)
    assert t.returncode == 0, t.stderr[-3000:]
    m = read_json(out/'metrics.json')
    assert [h['step'] for h in m['val_history']] == [7, 8] and m['val']['n'] == 3   # 60 rounds / 8 = 7 steps per epoch
    gold = read_json(out/'val'/'gold.json')['data']
    sub = read_json(out/'val'/'submit_VD.json')
    assert [g['image'] for g in gold] == [s['image'] for s in sub] and gold[0]['image'].startswith('pics/mosaiced-val/')
    assert [len(d['dialog']) for d in read_json(out/'val'/'test_VD.json')['dialogs']] == [g['dialog_id'] for g in gold]
    for g in (out/'val'/'gold.json', vd_root/'VD'/'val.json'):   # the bare list: its tables are found beside it
        e = run('cvlue_nb.evaluate', 'vd', '--gold', g, '--pred', out/'val'/'submit_VD.json', env=env)
        assert e.returncode == 0 and last_json(e) == m['val'], e.stdout + e.stderr
    assert '| val | ' in t.stdout and 'VD R@1' in t.stdout
    i = run('cvlue_nb.infer', '--task', 'vd', '--model', out/'model', '--data', vd_root, '--out', tmp_path/'infer', '--split', 'val',
            '--path-map', MAP, 'image_res=32', 'context_max_len=96', 'first_token_twice=true', 'batch_size=8', env=env)
    assert i.returncode == 0, i.stderr[-3000:]
    assert last_json(i) == m['val'] and read_json(tmp_path/'infer'/'gold.json') == read_json(out/'val'/'gold.json')


def torchrun(args, env, timeout=180):
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'cvlue_nb.train', *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


def test_torchrun_validates_on_both_ranks_and_fails_fast(itr_run, env, tmp_path):
    "2 CPU processes: the stored scores equal the scorer's on the written files; a validation image gone ends the job"
    out = tmp_path/'ddp'
    r, _ = torchrun(['--task', 'itr', *SMALL, 'max_steps=10', f'out={out}'], env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_json(out/'metrics.json')
    assert m['world_size'] == 2 and [h['step'] for h in m['val_history']] == [10]   # epoch 1 is the end: validated once
    e = run('cvlue_nb.evaluate', 'itr', '--gold', out/'val'/'gold.json', '--i2t', out/'val'/'i2t_submit.json',
            '--t2i', out/'val'/'t2i_submit.json', env=env)
    assert e.returncode == 0 and last_json(e) == m['val'], e.stdout + e.stderr
    recs = read_json(synth_data(env)/'IC'/'val.json'); recs[1]['image'] = 'images/val/gone.png'
    atomic_write_json(tmp_path/'val.json', recs)
    r, secs = torchrun(['--task', 'itr', *SMALL, 'max_steps=2', 'preflight=false', f'val_file={tmp_path/"val.json"}',
                        f'out={tmp_path/"bad"}'], env)
    print(f'validation image missing under torchrun: exit {r.returncode} after {secs:.1f} s')
    assert r.returncode != 0 and secs < 60 and 'error on rank' in r.stderr and 'gone.png' in r.stderr, r.stderr[-3000:]
    assert not (tmp_path/'bad'/'metrics.json').exists()
