"Smoke test of `python -m cvlue_nb.bench --quick`: it runs, writes bench.json + bench.md atomically, values are sane"
import json, os, subprocess, sys
import pytest, torch

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
    from cvlue_nb.bench import main
    with pytest.raises(SystemExit) as e: main(['--quick', '--tasks', 'ocr', '--out', str(tmp_path/'x')])
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'unknown task' in err and 'Traceback' not in err
    assert not (tmp_path/'x').exists()
