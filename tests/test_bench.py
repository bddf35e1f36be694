"Smoke test of `python -m cvlue_nb.bench --quick`: it runs, writes bench.json + bench.md atomically, values are sane"
import json, os, subprocess, sys
from dataclasses import replace
import pytest, torch
from cvlue_nb import bench
from cvlue_nb.core import CvlueError
from cvlue_nb.tasks import TASKS, get_task, register_task

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

def run(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'cvlue_nb.bench', *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)

@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')/'out'
    r = run('--quick', '--tasks', 'itr', '--out', str(out), '--quiet')
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r, json.loads((out/'bench.json').read_text(encoding='utf-8'))

def test_files_written_atomically(quick):
    out, r, res = quick
    assert sorted(p.name for p in out.iterdir()) == ['bench.json', 'bench.md']   # no temporary files left
    md = (out/'bench.md').read_text(encoding='utf-8')
    assert md.strip() == r.stdout.strip()                                        # the CLI prints the same tables
    for title in ('AGI step cost', 'ITR evaluation', 'Data pipeline', 'Generation', 'Peak memory'):
        assert f'**{title}' in md
    assert '| itr | tiny fp32 |' in md and 'shared with other jobs' in md

def test_meta_records_machine(quick):
    m = quick[2]['meta']
    assert m['quick'] is True and m['tasks'] == ['itr'] and m['seconds'] > 0
    assert m['versions']['torch'] == torch.__version__.split('+')[0] and m['torch_threads'] >= 1
    assert len(m['loadavg']) == 3 and len(m['loadavg_end']) == 3 and m['device'] in ('cpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')
    if not torch.cuda.is_available(): assert quick[2]['skipped'] == {'gpu': 'no CUDA device'}

def test_agi_step_values(quick):
    [row] = quick[2]['agi_step']
    assert row['task'] == 'itr' and row['batch'] == 4 and row['repeats'] == 3
    assert row['step_fn'] == 'Trainer.micro_step + Trainer.optimizer_step' and row['config'] == 'synth' and row['image_res'] == 64
    assert 0 < row['gflops_off'] < row['gflops_on'] and 1.2 < row['flop_ratio'] < 2.0   # ITR: y adds a vision pass + projection
    assert row['step']['off_ms'] > 0 and row['step']['on_ms'] > 0 and row['step']['ratio'] > 0
    assert row['fwd_bwd']['on_ms'] <= row['step']['on_ms']
    assert row['time_over_flop'] == pytest.approx(row['fwd_bwd']['ratio'] / row['flop_ratio'])
    assert row['step_time_over_flop'] == pytest.approx(row['step']['ratio'] / row['flop_ratio'])
    assert row['within_10pct'] == (abs(row['time_over_flop'] - 1) <= 0.10)
    assert row['step_within_10pct'] == (abs(row['step_time_over_flop'] - 1) <= 0.10)

def test_itr_eval_values(quick):
    rows = quick[2]['itr_eval']
    assert [r['pairs'] for r in rows] == [r['n_images'] * r['k'] for r in rows] == [16, 32]
    assert all(r['max_score_diff'] < 1e-4 and r['batched_ms'] > 0 and r['per_pair_ms'] > 0 for r in rows)

def test_data_generation_memory_values(quick):
    res = quick[2]
    [d] = res['data']
    assert d['task'] == 'itr' and d['workers'] == 0 and d['loader_samples_per_s'] > 0 and d['step_samples_per_s'] > 0
    gen = res['generation']
    assert [g['batch'] for g in gen] == [8, 2, 1] and all(g['images_per_s'] > 0 for g in gen)
    [m] = res['memory']
    assert m['task'] == 'itr' and 0 < m['rss_after_imports_mib'] <= m['peak_rss_mib']

def test_bad_arguments_exit_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: bench.main(['--quick', '--tasks', 'ocr', '--out', str(tmp_path/'x')])
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'unknown task' in err and 'Traceback' not in err
    assert not (tmp_path/'x').exists()

def test_trainer_step_is_the_trainers(monkeypatch):
    "trainer_step runs Trainer.micro_step + Trainer.optimizer_step: clipping (when set), schedule and progress included"
    clips, real = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', lambda *a, **k: clips.append(k.get('max_norm', a[1])) or real(*a, **k))
    t = bench.bench_trainer(bench.bench_config('vqa', batch_size=2, clip_grad=1.0), steps=3)
    lr0 = [g['lr'] for g in t.opt.param_groups]
    r = bench.trainer_step(t, bench.synthetic_batch('vqa', t.model.config, 2))
    assert 0 < r['fwd_bwd'] <= r['step'] and clips == [1.0]
    assert (t.prog.step, t.prog.seen, t.sched.last_epoch) == (1, 1, 1) and [g['lr'] for g in t.opt.param_groups] != lr0
    assert all(p.grad is None for p in t.model.parameters())

def test_tasks_come_from_the_registry():
    "A task registered with bench_text and random_targets is benchmarked; one without them is refused clearly"
    register_task(replace(get_task('vg'), name='vg_copy', bench_text={'tiny': (8, 0)}))
    register_task(replace(get_task('vg'), name='vg_nobench', random_targets=None))
    try:
        assert 'vg_copy' in bench.bench_tasks() and 'vg_nobench' not in bench.bench_tasks()
        t = bench.bench_trainer(bench.bench_config('vg_copy', batch_size=2), steps=1)
        bt = bench.synthetic_batch('vg_copy', t.model.config, 2)
        assert bt['input_ids'].shape == (2, 8) and bt['boxes'].shape == (2, 4) and bench.trainer_step(t, bt)['step'] > 0
        with pytest.raises(CvlueError, match='cannot be benchmarked'): bench.synthetic_batch('vg_nobench', t.model.config, 2)
        with pytest.raises(CvlueError, match='unknown task'): bench.run_bench('unused', quick=True, tasks=('vg_nobench',))
    finally:
        for n in ('vg_copy', 'vg_nobench'): TASKS.pop(n, None)
    assert bench.cvlue_batch('vg') == get_task('vg').presets['cvlue']['batch_size'] == 32


def test_gpu_check_script_runs_on_cpu(tmp_path):
    "tools/gpu_check.py (the GPU check of issue 12) runs its code path on a CPU; on a machine without CUDA it says so"
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, 'tools/gpu_check.py', '--device', 'cpu', '--preset', 'tiny', '--steps', '1',
                        '--tasks', 'vg', '--out', str(tmp_path/'gc.json')], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'gc.json').read_text())
    assert [(x['task'], x['steps']) for x in res['rows']] == [('vg', 1), ('vg', 1)] and res['diffusers']['diffusers_images'] == 2
    import torch
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, 'tools/gpu_check.py'], cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and 'no CUDA device here' in r.stderr
