"Tests of cvlue_nb.ablate: the registry, the tables on known numbers, resume-skipping, the CLI, one real smoke ablation"
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
from cvlue_nb import ablate as ab
from cvlue_nb.core import CvlueError, atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]
# a very small synthetic benchmark and model (as in tests/test_train.py): every training run takes seconds
SMALL = ['synth_n_train=16', 'synth_n_test=4', 'synth_size=32', 'image_res=32', 'batch_size=8', 'num_workers=0', 'k_test=4']




@pytest.fixture(scope='module')
def env(tmp_path_factory):
    e = dict(os.environ, OMP_NUM_THREADS='1', CVLUE_NB_CACHE=str(tmp_path_factory.mktemp('cache')), PYTHONHASHSEED='0')
    e.pop('CVLUE_TEST_KILL_AT_STEP', None)
    return e


def cli(args, env, timeout=240):
    return subprocess.run([sys.executable, '-m', 'cvlue_nb.ablate', *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# --- the registry -------------------------------------------------------------------------------------------------
def test_registry_maps_each_arm_to_its_agi_config():
    want = {'baseline': (False, 'none'), 'agi': (True, 'none'), 'no_kl': (True, 'no_kl'), 'no_cos': (True, 'no_cos'),
            'cos_l2': (True, 'cos_l2'), 'noise': (True, 'noise'), 'random': (True, 'random'), 'agi_weighted': (True, 'none')}
    paper = dict(itr=(0.5, 0.5, None), vqa=(None, 1.0, 1.0), vd=(None, 1.0, 1.0), vg=(None, 1.0, 0.0))  # eqs. 10, 14, 19
    assert list(ab.VARIANTS) == list(want)
    for name, (enabled, abl) in want.items():
        for task in ab.VARIANTS[name].tasks:
            c = ab.agi_config(name, task)
            lam, gamma, yw = paper[task] if name != 'agi_weighted' else (None, 0.5, 0.5)
            assert (c.enabled, c.ablation) == (enabled, abl), (name, task)
            assert (lam is None or c.lam == lam) and c.gamma == gamma and (yw is None or c.y_weight == yw), (name, task, c)
    assert ab.VARIANTS['no_cos'].tasks == ab.VARIANTS['cos_l2'].tasks == ('itr',)
    assert ab.VARIANTS['noise'].tasks == ab.VARIANTS['random'].tasks == ab.TASKS
    with pytest.raises(CvlueError, match='exists only for itr'): ab.create_variant('no_cos', 'vg')
    with pytest.raises(CvlueError, match='already registered'): ab.register_variant('x', name='agi')(lambda: {})


def test_tables_cover_the_papers_arms():
    assert ab.TABLES[3].variants == ('baseline', 'agi') and ab.TABLES[3].tasks == ab.TASKS
    assert ab.TABLES[4].variants == ('agi', 'no_kl', 'no_cos', 'cos_l2') and ab.TABLES[4].tasks == ('itr',)
    assert ab.TABLES[5].variants == ('agi', 'noise', 'random')
    runs = ab.plan_runs(('itr',), (0, 1, 2))
    assert len(runs) == 21 and [r.seed for r in runs[:7]] == [0] * 7   # seed by seed


def test_every_planned_run_resolves_to_a_valid_train_config(tmp_path):
    for r in ab.plan_runs(ab.TASKS, (0,)):
        cfg = ab.train_config(r, ab.run_overrides(r, 7), ab.run_folder(tmp_path, r))
        want = ab.VARIANTS[r.variant].overrides
        assert (cfg.task, cfg.agi, cfg.ablation, cfg.seed, cfg.max_steps) == (r.task, want['agi'], want['ablation'], 0, 7)
        assert Path(cfg.out) == tmp_path/'runs'/r.name


# --- aggregation and tables on known numbers -------------------------------------------------------------------------
def rec(task, variant, seed, status='done', **m):
    return dict(task=task, variant=variant, seed=seed, status=status, run=f'runs/{task}-{variant}-s{seed}', metrics=m)


def fake_records():
    itr = lambda a, b: dict(i2t_r1=a, i2t_r5=a + .1, i2t_r10=a + .2, t2i_r1=b, t2i_r5=b + .1, t2i_r10=b + .2)
    return ([rec('itr', 'baseline', s, **itr(a, b)) for s, a, b in [(0, .10, .20), (1, .20, .20), (2, .30, .20)]] +
            [rec('itr', 'agi', s, **itr(a, b)) for s, a, b in [(0, .20, .30), (1, .20, .40), (2, .50, .20)]] +
            [rec('itr', 'noise', 0, **itr(.1, .1)), rec('itr', 'random', 0, 'failed')] +
            [rec('vqa', 'baseline', s, acc=a) for s, a in [(0, .40), (1, .60)]] +
            [rec('vqa', 'agi', s, acc=a) for s, a in [(0, .50), (1, .50)]])


def test_table3_exact_markdown():
    # ITR TR R@1: baseline .1/.2/.3 → 20.0 ± 10.0; AGI .2/.2/.5 → 30.0 ± 17.3; Δ .1/0/.2 → +10.0 ± 10.0
    # ITR IR R@1: baseline 20.0 ± 0.0; AGI .3/.4/.2 → 30.0 ± 10.0; Δ +10.0 ± 10.0; VQA: 50.0 ± 14.1 vs 50.0 ± 0.0, Δ +0.0 ± 14.1
    # Δ intervals: ± t(.975, df) · sd / √n = 4.303 · 10 / √3 = 24.8 (ITR), 12.706 · 14.14 / √2 = 127.1 (VQA)
    assert ab.render_table(ab.TABLES[3], fake_records()) == '\n'.join([
        '| task | arm | seeds | TR R@1 | TR R@5 | TR R@10 | IR R@1 | IR R@5 | IR R@10 | VQA Acc |',
        '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
        '| ITR | baseline | 3 | 20.0 ± 10.0 | 30.0 ± 10.0 | 40.0 ± 10.0 | 20.0 ± 0.0 | 30.0 ± 0.0 | 40.0 ± 0.0 |  |',
        '| ITR | +AGI | 3 | 30.0 ± 17.3 | 40.0 ± 17.3 | 50.0 ± 17.3 | 30.0 ± 10.0 | 40.0 ± 10.0 | 50.0 ± 10.0 |  |',
        '| ITR | Δ +AGI − baseline |  ' + '| +10.0 ± 10.0 [-14.8, +34.8] ' * 6 + '|  |',
        '| VQA | baseline | 2 |  |  |  |  |  |  | 50.0 ± 14.1 |',
        '| VQA | +AGI | 2 |  |  |  |  |  |  | 50.0 ± 0.0 |',
        '| VQA | Δ +AGI − baseline |  |  |  |  |  |  |  | +0.0 ± 14.1 [-127.1, +127.1] |'])


def test_table5_single_seed_missing_arm_and_failed_run():
    # NOISE has one seed (value alone); RANDOM only failed (no row, no Δ row); Δ AGI − NOISE and NOISE − baseline on seed 0 only
    assert ab.render_table(ab.TABLES[5], fake_records()).splitlines()[2:] == [
        '| ITR | +AGI | 3 | 30.0 ± 17.3 | 40.0 ± 17.3 | 50.0 ± 17.3 | 30.0 ± 10.0 | 40.0 ± 10.0 | 50.0 ± 10.0 |  |',
        '| ITR | NOISE | 1 | 10.0 | 20.0 | 30.0 | 10.0 | 20.0 | 30.0 |  |',
        '| ITR | Δ +AGI − NOISE |  | +10.0 | +10.0 | +10.0 | +20.0 | +20.0 | +20.0 |  |',
        '| ITR | Δ NOISE − baseline |  | +0.0 | +0.0 | +0.0 | -10.0 | -10.0 | -10.0 |  |',  # Table 3's baseline, seed 0
        '| VQA | +AGI | 2 |  |  |  |  |  |  | 50.0 ± 0.0 |']
    assert ab.render_table(ab.TABLES[4], [rec('vqa', 'agi', 0, acc=.5)]) == ''


def test_write_results(tmp_path):
    p = ab.write_results(tmp_path, fake_records(), 'python -m cvlue_nb.ablate --task itr --seeds 3', (3, 5))
    md = p.read_text(encoding='utf-8')
    assert md.startswith('Produced by:\n\n```bash\npython -m cvlue_nb.ablate --task itr --seeds 3\n```')
    assert '**Table 3.' in md and '**Table 5.' in md and '**Table 4.' not in md
    assert md.rstrip().endswith('Failed runs (not in the tables): runs/itr-random-s0')
    res = read_json(tmp_path/'results.json')
    assert len(res['runs']) == 12 and res['command'].endswith('--seeds 3')
    assert res['summary']['itr']['agi']['i2t_r1']['n'] == 3
    assert abs(res['summary']['vqa']['baseline']['acc']['std'] - 0.1414213562) < 1e-9
    assert (tmp_path/'ablation.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# --- resume: finished runs are skipped ------------------------------------------------------------------------------
def test_finished_run_is_skipped_and_a_changed_one_refused(tmp_path):
    run = ab.Run('itr', 'agi', 1)
    out = ab.run_folder(tmp_path, run); out.mkdir(parents=True)
    from dataclasses import asdict
    cfg = ab.train_config(run, ab.run_overrides(run, 5, {'lr': '1e-3'}), out)
    atomic_write_json(out/'config.json', asdict(cfg))
    atomic_write_json(out/'metrics.json', dict(task='itr', step=5, total_seconds=12.0, metrics=dict(i2t_r1=.5, t2i_r1=.25)))
    def must_not_run(*a): raise AssertionError('a finished run was trained again')
    r = ab.execute_run(run, tmp_path, 5, {'lr': '1e-3'}, runner=must_not_run)
    assert (r['status'], r['metrics'], r['seconds'], r['config']['seed']) == ('skipped', dict(i2t_r1=.5, t2i_r1=.25), 12.0, 1)
    with pytest.raises(CvlueError, match='other settings'): ab.execute_run(run, tmp_path, 6, {'lr': '1e-3'}, runner=must_not_run)
    # an unfinished run (no metrics.json) is handed to the runner, which resumes it; a failing runner is recorded
    def fails(r, ov, o): raise CvlueError('boom')
    r2 = ab.execute_run(ab.Run('itr', 'baseline', 1), tmp_path, 5, {'lr': '1e-3'}, runner=fails)
    assert (r2['status'], r2['error']) == ('failed', 'boom')
    # a runner whose training used other settings than asked (e.g. a preset edited mid-ablation) is a failed run
    def drifts(r, ov, o):
        o.mkdir(parents=True, exist_ok=True)
        atomic_write_json(o/'config.json', dict(asdict(ab.train_config(r, ov, o)), lr=0.5))
        atomic_write_json(o/'metrics.json', dict(step=5, metrics={}))
    r3 = ab.execute_run(ab.Run('itr', 'noise', 1), tmp_path, 5, {'lr': '1e-3'}, runner=drifts)
    assert r3['status'] == 'failed' and "other settings {'lr': (0.5, 0.001)}" in r3['error']


# --- the command line -----------------------------------------------------------------------------------------------
def test_cli_refuses_reserved_and_unknown_settings(env, tmp_path):
    r = cli(['--out', str(tmp_path), 'seed=3'], env)
    assert r.returncode == 1 and 'sets seed itself' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'runs').exists()


@pytest.mark.parametrize('args,msg', [(['--tables', '3,9'], 'unknown table 9'), (['--tables', 'x'], 'expected numbers'),
                                      (['--seeds', '0'], '--seeds must be >= 1'), (['--variants', 'nokl'], 'unknown ablation arm'),
                                      (['--jobs', '2', '--in-process'], '--jobs must be')])
def test_cli_argument_errors(args, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: ab.main(['--out', str(tmp_path), *args])
    assert e.value.code == 1 and msg in capsys.readouterr().err


def test_cli_unknown_training_setting_fails_before_training(env, tmp_path):
    r = cli(['--out', str(tmp_path), 'bacth_size=3'], env)
    assert r.returncode == 1 and "unknown setting 'bacth_size'" in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'runs').exists()


def test_smoke_real_ablation_then_resume(env, tmp_path):
    """A real Table 3 for ITR: seed 0 (2 training runs of 2 steps, one subprocess each, both at once), then the same command with
    two seeds, which skips the finished seed-0 runs and trains only seed 1 (in-process, to keep the test short)"""
    base = ['--task', 'itr', '--tables', '3', '--steps', '2', '--out', str(tmp_path/'abl'), *SMALL]
    t0 = time.time(); r = cli(['--seeds', '1', '--jobs', '2', *base], env)  # the two runs of seed 0 in parallel
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count(': done (took') == 2, r.stdout
    log = (tmp_path/'abl'/'runs'/'itr-agi-s0'/'train.log').read_text(encoding='utf-8')
    assert '-m cvlue_nb.train --task itr' in log and '--config' in log   # the subprocess got the pinned settings
    assert (tmp_path/'abl'/'runs'/'itr-agi-s0'/'requested_config.yaml').exists()
    r2 = cli(['--seeds', '2', '--in-process', *base], env)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    assert r2.stdout.count('skipped (finished before') == 2 and r2.stdout.count(': done (took') == 2, r2.stdout
    md = (tmp_path/'abl'/'tables.md').read_text(encoding='utf-8')
    assert md.startswith('Produced by:\n\n```bash\npython -m cvlue_nb.ablate --seeds 2 --in-process --task itr --tables 3 --steps 2 --out ')
    assert '| ITR | baseline | 2 |' in md and '| ITR | +AGI | 2 |' in md and '| ITR | Δ +AGI − baseline |' in md
    assert 'Settings: tiny model, 2 steps of batch 8, lr ' in md
    assert '16 training / 4 test images of 32 px. Mean time per run: ITR baseline ' in md
    res = read_json(tmp_path/'abl'/'results.json')
    assert [(x['variant'], x['seed'], x['status'], x['steps']) for x in res['runs']] == \
        [('baseline', 0, 'skipped', 2), ('agi', 0, 'skipped', 2), ('baseline', 1, 'done', 2), ('agi', 1, 'done', 2)]
    assert all(set(x['metrics']) >= {'i2t_r1', 't2i_r10'} and x['config']['max_steps'] == 2 for x in res['runs'])
    assert [x['config']['agi'] for x in res['runs']] == [False, True, False, True]
    assert (tmp_path/'abl'/'ablation.png').exists()
    print(f'smoke ablation {time.time() - t0:.0f} s')
