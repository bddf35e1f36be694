"CLI and integration tests of cvlue_nb.train: kill-and-resume exactness, torchrun with 2 CPU processes, the four tasks, real data"
import json, os, signal, subprocess, sys
from pathlib import Path
import pytest, torch, yaml
from safetensors.torch import load_file
from cvlue_nb.core import cvlue_sample_dir, read_json
from cvlue_nb.config import parse_overrides
from cvlue_nb import train as tr

ROOT = Path(__file__).resolve().parents[1]
# a very small synthetic benchmark and model: every run below takes seconds
SMALL = ['synth_n_train=16', 'synth_n_test=4', 'synth_size=32', 'image_res=32', 'batch_size=8', 'num_workers=0',
         'k_test=4', 'log_every=1']


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "Environment of the subprocesses: one thread, a private cache shared by the tests of this file"
    cache = tmp_path_factory.mktemp('cache')
    e = dict(os.environ, OMP_NUM_THREADS='1', CVLUE_NB_CACHE=str(cache), PYTHONHASHSEED='0')
    e.pop('CVLUE_TEST_KILL_AT_STEP', None)
    return e


def train(args, env, timeout=300, **extra):
    "Run `python -m cvlue_nb.train ARGS`; returns the CompletedProcess"
    return subprocess.run([sys.executable, '-m', 'cvlue_nb.train', *args], env=dict(env, **extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def weights(run: Path) -> dict:
    return load_file(str(run/'model'/'model.safetensors'))


def test_bad_setting_is_a_clear_error(env):
    r = train(['bacth_size=3'], env, timeout=120)
    assert r.returncode == 1 and "unknown setting 'bacth_size'" in r.stderr and 'Traceback' not in r.stderr


def test_kill_and_resume_is_exact(env, tmp_path):
    "SIGKILL right after the checkpoint of step k, resume: same final weights and metrics as an uninterrupted run"
    # 80 captions / batch 8 = 10 micro-batches per epoch; accumulate 3 → step 4 straddles the epoch boundary
    args = SMALL + ['--task', 'itr', 'accumulate=3', 'max_steps=6', 'ckpt_every=1', 'keep_ckpts=1']
    ref = train(args + [f'out={tmp_path/"ref"}'], env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_m, ref_w = read_json(tmp_path/'ref'/'metrics.json'), weights(tmp_path/'ref')
    for k in (3, 4):  # mid-epoch, and the first step whose micro-batches span two epochs
        out = tmp_path/f'kill{k}'
        killed = train(args + [f'out={out}'], env, CVLUE_TEST_KILL_AT_STEP=str(k))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert [p.name for p in tr.checkpoints(out)] == [f'step_{k:07d}.pt'] and not (out/'metrics.json').exists()
        resumed = train(args + [f'out={out}', 'num_workers=1'], env)  # a different worker count changes nothing
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f'resumed {out}/checkpoints/step_{k:07d}.pt at step {k}/6' in resumed.stdout
        w, m = weights(out), read_json(out/'metrics.json')
        assert w.keys() == ref_w.keys() and all(torch.equal(w[n], ref_w[n]) for n in w), f'weights differ after kill at {k}'
        assert m['metrics'] == ref_m['metrics'] and m['final_losses'] == ref_m['final_losses']


def test_torchrun_two_cpu_processes(env, tmp_path):
    "DDP with gloo: trains, and evaluation gathers every test item exactly once from both ranks"
    out = tmp_path/'ddp'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'cvlue_nb.train', '--task', 'itr', *SMALL, 'max_steps=3', f'out={out}'],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_json(out/'metrics.json')
    assert m['world_size'] == 2 and m['step'] == 3 and read_json(out/'env.json')['world_size'] == 2
    ck = torch.load(tr.checkpoints(out)[-1], weights_only=True)
    assert len(ck['progress']['rank_rngs']) == 2
    data = Path(env['CVLUE_NB_CACHE'])/'synth'
    root = next(p for p in data.iterdir() if '-16-4-4-32px' in p.name)
    images, caps = read_json(root/'IC'/'test_images.json'), read_json(root/'IC'/'test_captions.json')
    i2t, t2i = read_json(out/'submission'/'i2t_submit.json'), read_json(out/'submission'/'t2i_submit.json')
    assert sorted(i2t) == sorted(images) and sorted(t2i) == sorted(caps)  # one entry per test item, none twice
    assert all(len(v) == min(10, len(caps)) for v in i2t.values()) and all(len(v) == min(10, len(images)) for v in t2i.values())
    assert m['metrics'] and all(0 <= v <= 1 for v in m['metrics'].values())


@pytest.mark.parametrize('task', ['itr', 'vqa', 'vd', 'vg'])
def test_tasks_train_and_evaluate_with_and_without_agi(task, env, tmp_path, monkeypatch):
    monkeypatch.setenv('CVLUE_NB_CACHE', env['CVLUE_NB_CACHE']); monkeypatch.setenv('OMP_NUM_THREADS', '1')
    for agi in (True, False):
        ov = parse_overrides(SMALL + ['max_steps=2', f'agi={agi}', f'out={tmp_path/str(agi)}'])
        rec = tr.fit(tr.resolve_config(task, 'synth', overrides=ov), progress=False)
        assert rec['step'] == 2 and all(v == v for v in rec['final_losses'].values())  # finite (no NaN)
        assert ('kl' in rec['final_losses']) == agi
        assert rec['metrics'], f'{task}: no metrics'


def test_real_data_path(env, tmp_path):
    "--data cvlue --data-root --agi-dir --init --tokenizer on the 8 real sample images (tiny model, a few steps)"
    sample = cvlue_sample_dir()
    if sample is None: pytest.skip('CVLUE sample not found (set CVLUE_SAMPLE): the real-data training path was not checked')
    from cvlue_nb.checkpoint import tiny_cclm_state_dict
    from cvlue_nb.generate import generate_agis
    from cvlue_nb.model import build_char_tokenizer
    from cvlue_nb.text2img import SceneBackend
    ex = read_json(sample/'example'/'IC'/'example.json')
    # the sample has no ITR test images: the test split points at the training images and captions
    (tmp_path/'images.json').write_text(json.dumps([r['image'] for r in ex]), encoding='utf-8')
    (tmp_path/'captions.json').write_text(json.dumps([c for r in ex for c in r['caption']], ensure_ascii=False), encoding='utf-8')
    (tmp_path/'gold.json').write_text(json.dumps([{'image': r['image'], 'caption': r['caption']} for r in ex],
                                                 ensure_ascii=False), encoding='utf-8')
    tok = build_char_tokenizer([c for r in ex for c in r['caption']]); tok.save_pretrained(str(tmp_path/'tok'))
    torch.save({'model': tiny_cclm_state_dict(40, 0, vocab_size=len(tok))}, tmp_path/'cclm_tiny.th')
    generate_agis('itr', sample/'example', tmp_path/'agi', SceneBackend(size=32), split='example',
                  image_root=sample, progress=False)
    out = tmp_path/'run'
    r = train(['--task', 'itr', '--data', 'cvlue', '--data-root', str(sample), '--agi-dir', str(tmp_path/'agi'),
               '--init', str(tmp_path/'cclm_tiny.th'), '--tokenizer', str(tmp_path/'tok'), '--out', str(out),
               'model=tiny', 'image_res=32', 'batch_size=4', 'accumulate=1', 'max_steps=2', 'num_workers=0', 'k_test=4',
               'train_file=example/IC/example.json', f'test_file={tmp_path/"images.json"}',
               f'test_captions={tmp_path/"captions.json"}', f'gold_file={tmp_path/"gold.json"}'], env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_json(out/'metrics.json'); cfg = read_json(out/'config.json')
    assert m['step'] == 2 and cfg['data'] == 'cvlue' and cfg['model'] == 'tiny' and 'kl' in m['final_losses']
    assert (out/'model'/'tokenizer').is_dir() and (out/'tb').is_dir()


PLUGIN = '''
from dataclasses import replace
from cvlue_nb.tasks import TASKS, register_task
itr = TASKS['itr']
# one changed field: a synthetic preset of 2 steps
register_task(replace(itr, name='itr_copy', presets={**itr.presets, 'synth': {**itr.presets['synth'], 'max_steps': 2}}))
'''


def test_registered_task_trains_and_evaluates_through_the_cli(env, tmp_path):
    "The registry is the one place: a task registered by a plugin file trains, evaluates and infers via the CLIs"
    (tmp_path/'my_tasks.py').write_text(PLUGIN, encoding='utf-8')
    e = dict(env, CVLUE_NB_PLUGINS=str(tmp_path/'my_tasks.py'))
    out = tmp_path/'run'
    r = train(['--task', 'itr_copy', *[a for a in SMALL if a != 'log_every=1'], f'out={out}'], e)
    assert r.returncode == 0, r.stderr[-3000:]
    m, cfg = read_json(out/'metrics.json'), read_json(out/'config.json')
    assert (m['task'], m['step'], cfg['task'], cfg['max_steps']) == ('itr_copy', 2, 'itr_copy', 2)
    assert set(m['metrics']) == {'i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10'}
    assert (out/'submission'/'i2t_submit.json').exists() and 'itr_copy (AGI, seed 42)' in r.stdout
    data = next(p for p in (Path(env['CVLUE_NB_CACHE'])/'synth').iterdir() if '-16-4-4-32px' in p.name)
    inf = subprocess.run([sys.executable, '-m', 'cvlue_nb.infer', '--task', 'itr_copy', '--model', str(out/'model'),
                          '--data', str(data), '--out', str(tmp_path/'infer'), 'k_test=4', 'itc_weight=10'], env=e, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert inf.returncode == 0, inf.stderr[-3000:]
    assert json.loads(inf.stdout.strip().splitlines()[-1]) == m['metrics']  # the run's own evaluation settings
    unknown = train(['--task', 'itr_copy'], env, timeout=120)   # without the plugin the task does not exist
    assert unknown.returncode != 0 and 'itr_copy' in unknown.stderr


def torchrun(args, env, timeout=180, **extra):
    "Run `torchrun --nproc_per_node 2 -m cvlue_nb.train ARGS`; returns (CompletedProcess, seconds)"
    import time
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'cvlue_nb.train', *args], env=dict(env, **extra), cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    return r, time.time() - t0


def test_failure_on_one_rank_ends_the_job_promptly(env, tmp_path):
    "Rank 1 raises after step 2 of 50: the job exits non-zero within 60 s and shows rank 1's message"
    r, secs = torchrun(['--task', 'itr', *SMALL, 'max_steps=50', f'out={tmp_path/"run"}'], env,
                       CVLUE_TEST_FAIL_AT_STEP='2', CVLUE_TEST_FAIL_RANK='1')
    print(f'planted failure: exit {r.returncode} after {secs:.1f} s')
    assert r.returncode != 0 and secs < 60, (r.returncode, secs, r.stderr[-2000:])
    assert 'error on rank 1: planted failure at step 2 on rank 1' in r.stderr, r.stderr[-3000:]
    assert not (tmp_path/'run'/'metrics.json').exists()


def test_truncated_image_on_one_rank_ends_the_job_promptly(env, tmp_path, monkeypatch):
    "A truncated training image: the rank that reads it names the file, and the job exits within 60 s"
    from cvlue_nb.run import resolve_config, synth_root
    e = dict(env); monkeypatch.setenv("CVLUE_NB_CACHE", e["CVLUE_NB_CACHE"])
    ov = parse_overrides(SMALL + [f'data_root={tmp_path/"synth"}', 'agi=false'])
    root = synth_root(resolve_config('itr', 'synth', overrides=ov), progress=False)
    bad = root/read_json(root/'IC'/'train.json')[3]['image']
    bad.write_bytes(bad.read_bytes()[:200])                          # a download cut short
    r, secs = torchrun(['--task', 'itr', *SMALL, f'data_root={root}', 'agi=false', 'max_steps=10', f'out={tmp_path/"run"}'], e)
    print(f'truncated image: exit {r.returncode} after {secs:.1f} s')
    assert r.returncode != 0 and secs < 60, (r.returncode, secs, r.stderr[-2000:])
    assert 'error on rank' in r.stderr and str(bad) in r.stderr and 'truncated' in r.stderr, r.stderr[-3000:]


def test_preflight_under_torchrun_ends_the_job_before_training(env, tmp_path, monkeypatch):
    "A test file naming a missing image: rank 0 lists it, every rank stops before the first step, within 60 s"
    from cvlue_nb.run import resolve_config, synth_root
    monkeypatch.setenv('CVLUE_NB_CACHE', env['CVLUE_NB_CACHE'])
    root = synth_root(resolve_config('itr', 'synth', overrides=parse_overrides(SMALL)), progress=False)
    images = read_json(root/'IC'/'test_images.json'); was, images[0] = images[0], 'images/test/gone.png'
    (tmp_path/'images.json').write_text(json.dumps(images), encoding='utf-8')
    gold = [dict(g, image='images/test/gone.png') if g['image'] == was else g for g in read_json(root/'IC'/'test_gold.json')]
    (tmp_path/'gold.json').write_text(json.dumps(gold, ensure_ascii=False), encoding='utf-8')   # the gold of that image list
    r, secs = torchrun(['--task', 'itr', *SMALL, 'max_steps=10', f'test_file={tmp_path/"images.json"}',
                        f'test_captions={root/"IC"/"test_captions.json"}', f'gold_file={tmp_path/"gold.json"}',
                        f'out={tmp_path/"run"}'], env)
    print(f'preflight under torchrun: exit {r.returncode} after {secs:.1f} s')
    assert r.returncode != 0 and secs < 60, (r.returncode, secs, r.stderr[-2000:])
    assert 'error on rank 0: train: 1 problem in the inputs' in r.stderr and str(root/'images'/'test'/'gone.png') in r.stderr, r.stderr[-3000:]
    assert not (tmp_path/'run'/'checkpoints').exists() and not (tmp_path/'run'/'tb').exists()
