"""The answer-guided image job from the outside: killed and resumed, run under torchrun, and its error paths.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_generate.py
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from cvlue_nb import synth
from cvlue_nb.core import sha256_file
from cvlue_nb.generate import main, read_manifest, load_agi_index, agi_relpath
from cvlue_nb.text2img import SceneBackend, draw_grounding_agi

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    "A small synthetic CVLUE dataset in the official layout"
    d = tmp_path_factory.mktemp('ds')
    synth.generate(d, seed=0, n_train=40, n_val=1, n_test=1, progress=False)
    return d


def gen_cmd(*args):
    return [sys.executable, '-m', 'cvlue_nb.generate', *map(str, args), '--no-progress']


def check_output(out: Path, keys: set):
    "Every key exactly once in the merged manifest, every image readable with its recorded hash, no debris"
    assert [p.name for p in out.glob('manifest*.jsonl')] == ['manifest.jsonl']
    rows = read_manifest(out)
    assert sorted(r['key'] for r in rows) == sorted(keys)           # one row per key, none missing
    for r in rows:
        p = out/r['path']
        assert r['path'] == agi_relpath(r['task'], r['key'])
        assert sha256_file(p) == r['sha256'], r['key']
        with Image.open(p) as im: im.verify()
    assert len(list(out.glob('images/*/*.png'))) == len(keys)      # no image twice, no stray image
    assert not [p for p in out.rglob('*') if p.name.endswith('.tmp')]
    assert set(load_agi_index(out)) == keys
    return rows


def test_kill_and_resume(ds, tmp_path):
    out = tmp_path/'agi'
    keys = {str(r['image_id']) for r in json.loads((ds/'IC'/'train.json').read_text(encoding='utf-8'))}
    env = dict(ENV, CVLUE_SCENE_DELAY='0.1')   # test-only: about 4 s of drawing, so there is time to kill it
    p = subprocess.Popen(gen_cmd('--task', 'itr', '--data', ds, '--out', out, '--batch-size', 2), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part, t0 = out/'manifest.rank0.jsonl', time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        if part.exists() and len(part.read_text(encoding='utf-8').splitlines()) >= 6: break
        time.sleep(0.05)
    assert p.poll() is None, 'the job ended before it could be killed: ' + p.stdout.read().decode()
    p.send_signal(signal.SIGKILL); p.wait()
    done_before = len(read_manifest(out))
    assert 6 <= done_before < len(keys)
    assert not (out/'manifest.jsonl').exists()                     # the job never finished
    # debris a kill in the middle of a write can leave: a cut manifest row and a temporary image
    with open(part, 'ab') as f: f.write(b'{"key": "cut-short", "task": "i')
    stale = out/'images'/'00'/'.x.png.abc123.tmp'; stale.parent.mkdir(parents=True, exist_ok=True); stale.write_bytes(b'half')
    r = subprocess.run(gen_cmd('--task', 'itr', '--data', ds, '--out', out, '--batch-size', 2), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out/'generate_summary.json').read_text(encoding='utf-8'))
    assert summary['skipped'] >= done_before and summary['failed'] == 0
    assert summary['generated'] + summary['skipped'] == len(keys)
    assert 'skipped' in r.stdout and 'failed 0' in r.stdout
    check_output(out, keys)


def test_torchrun_two_processes(ds, tmp_path):
    out = tmp_path/'agi_vqa'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'cvlue_nb.generate', '--task', 'vqa', '--data', str(ds), '--out', str(out), '--no-progress']
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    keys = {q['image'] for q in json.loads((ds/'VQA'/'train.json').read_text(encoding='utf-8'))}
    rows = check_output(out, keys)
    assert {row['rank'] for row in rows} == {0, 1}                 # both ranks wrote their own half
    assert sum(row['rank'] == 1 for row in rows) == len(keys) // 2
    # the same bytes as one process would write
    single = tmp_path/'agi_vqa_single'
    assert main(['--task', 'vqa', '--data', str(ds), '--out', str(single), '--no-progress']) == 0
    a, b = load_agi_index(out), load_agi_index(single)
    assert {k: p.read_bytes() for k, p in a.items()} == {k: p.read_bytes() for k, p in b.items()}


def test_vd_reuses_itr_images(ds, tmp_path):
    assert main(['--task', 'itr', '--data', str(ds), '--out', str(tmp_path/'itr'), '--no-progress']) == 0
    assert main(['--task', 'vd', '--data', str(ds), '--out', str(tmp_path/'vd'), '--reuse-itr', str(tmp_path/'itr'),
                 '--no-progress']) == 0
    s = json.loads((tmp_path/'vd'/'generate_summary.json').read_text(encoding='utf-8'))
    assert (s['reused'], s['generated'], s['failed']) == (40, 0, 0)


def test_bad_items_stop_the_job_first_or_are_counted_with_no_preflight(ds, tmp_path, capsys):
    d = tmp_path/'ds'; (d/'IC').mkdir(parents=True)
    recs = json.loads((ds/'IC'/'train.json').read_text(encoding='utf-8'))[:5]
    recs[1]['caption'] = []; recs[3]['image'] = 'images/train/nowhere.png'
    (d/'IC'/'train.json').write_text(json.dumps(recs, ensure_ascii=False), encoding='utf-8')
    args = ['--task', 'itr', '--data', str(d), '--image-root', str(ds), '--out', str(tmp_path/'o'), '--no-progress']
    assert main(args) == 1   # the preflight: both problems at once, before the first image
    err = capsys.readouterr().err
    assert 'generate: 2 problems in the inputs' in err and 'train.json[1].caption: no captions' in err and 'nowhere.png' in err
    assert not (tmp_path/'o').exists()
    assert main(args + ['--no-preflight']) == 0
    out = capsys.readouterr().out
    assert 'generated 3' in out and 'failed 2' in out
    assert 'train.json[1].caption: no captions' in out and 'nowhere.png' in out


def test_clear_errors(ds, tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(['--task', 'caption', '--data', str(ds), '--out', str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'caption'" in capsys.readouterr().err
    assert main(['--task', 'vg', '--data', str(tmp_path/'nothing'), '--out', str(tmp_path/'o')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'Traceback' not in err
    assert main(['--task', 'vqa', '--data', str(ds), '--out', str(tmp_path/'o2'), '--rewriter', 'llm',
                 '--llm-base-url', 'http://127.0.0.1:9/v1', '--llm-model', 'm', '--llm-retries', '0']) == 1
    assert 'cannot be used' in capsys.readouterr().err
    assert main(['--task', 'itr', '--data', str(ds), '--out', str(tmp_path/'o3'), '--backend', 'diffusers']) == 1
    assert '--model' in capsys.readouterr().err


def test_rerun_with_other_settings_is_refused(ds, tmp_path, capsys):
    o = str(tmp_path/'o')
    assert main(['--task', 'vg', '--data', str(ds), '--out', o, '--limit', '3', '--no-progress']) == 0
    assert main(['--task', 'vg', '--data', str(ds), '--out', o, '--seed', '1', '--no-progress']) == 1
    assert 'seed: 0 there, 1 now' in capsys.readouterr().err


def test_scene_backend_draws_the_caption():
    "'左边有两个红色的圆形' → exactly two red blobs, all red in the left half"
    for seed in range(10):
        a = np.asarray(SceneBackend()(['左边有两个红色的圆形'], [seed])[0], dtype=int)
        red = np.abs(a - np.array([220, 40, 40])).sum(-1) < 60
        assert ndimage.label(red)[1] == 2
        assert red[:, :a.shape[1] // 2].sum() > 200 and red[:, a.shape[1] // 2:].sum() == 0


@pytest.mark.sample('draw_grounding_agi on a real VG image')
def test_vg_box_on_real_sample_image(sample):
    root = sample
    rec = json.loads((root/'example'/'VG'/'example.json').read_text(encoding='utf-8'))[1]
    with Image.open(root/rec['image']) as im: real = im.convert('RGB')
    agi = np.asarray(draw_grounding_agi(real, rec['bbox']))
    x, y, w, h = (round(v) for v in rec['bbox'])
    green = (agi == [0, 255, 0]).all(-1)
    assert green[y, x:x + w].all() and green[y + h - 1, x:x + w].all()     # top and bottom edges
    assert green[y:y + h, x].all() and green[y:y + h, x + w - 1].all()     # left and right edges
    inside = np.asarray(real)[y + 10:y + h - 10, x + 10:x + w - 10]
    assert (agi[y + 10:y + h - 10, x + 10:x + w - 10] == inside).all()     # the inside is untouched
    assert green.sum() < 2 * (w + h) * 10                                  # nothing drawn elsewhere


def test_llm_rewriter_through_the_job(ds, tmp_path, capsys, monkeypatch):
    "A local OpenAI-compatible server: LLM prompts in the manifest, two 500s fall back to rules, the key leaks nowhere"
    from cvlue_nb.prompts import ScriptedChatServer
    key = 'sk-test-very-secret-42'
    monkeypatch.setenv('OPENAI_API_KEY', key)
    out = tmp_path/'agi'
    with ScriptedChatServer(script=['ok', 500, 500]) as srv:   # the probe succeeds, then two items fail once
        rc = main(['--task', 'vqa', '--data', str(ds), '--out', str(out), '--rewriter', 'llm', '--llm-base-url',
                   srv.base_url, '--llm-model', 'm', '--llm-retries', '0', '--no-progress'])
    logs = capsys.readouterr()
    assert rc == 0, logs.err
    assert 'prompts that fell back to rules: 2' in logs.out
    rows = read_manifest(out)
    assert {r['rewriter'] for r in rows} == {'llm:m'}
    assert sorted(r['prompt_source'] for r in rows).count('rules') == 2 and sum(r['fell_back'] for r in rows) == 2
    assert all(srv.authorizations) and key not in logs.out + logs.err
    for f in out.rglob('*'):
        if f.is_file(): assert key.encode() not in f.read_bytes(), f
    # a rerun asks nothing: every item is done
    with ScriptedChatServer(script=['ok']) as srv2:
        assert main(['--task', 'vqa', '--data', str(ds), '--out', str(out), '--rewriter', 'llm', '--llm-base-url',
                     srv2.base_url, '--llm-model', 'm', '--no-progress']) == 0
        assert len(srv2.requests) <= 1                               # at most the probe (cached after the first run)


@pytest.mark.parametrize('mode', ['llm', 'auto'])
def test_job_waits_out_four_transient_failures_at_the_start(ds, tmp_path, capsys, caplog, monkeypatch, mode):
    """Issue 13: the first four requests fail transiently (429, 500, a hang past the client timeout, malformed JSON);
    the probe retries through them and the job completes with LLM prompts, under --rewriter llm and auto alike"""
    from cvlue_nb.prompts import ScriptedChatServer
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test-key')
    out, t0 = tmp_path/'agi', time.perf_counter()
    with ScriptedChatServer(script=[429, 500, 'timeout', 'malformed'], sleep=2.0) as srv:   # then 'ok' for good
        rc = main(['--task', 'vqa', '--data', str(ds), '--out', str(out), '--rewriter', mode, '--llm-base-url', srv.base_url,
                   '--llm-model', 'm', '--llm-retries', '4', '--llm-timeout', '0.5', '--llm-backoff', '0.05', '--limit', '8',
                   '--no-progress'])
        n_req = len(srv.requests)
    logs, secs = capsys.readouterr(), time.perf_counter() - t0
    assert rc == 0, logs.err
    assert not any('did not answer' in m or 'cannot be used' in m or 'failed' in m for m in caplog.messages), caplog.messages
    assert 'generated 8' in logs.out and 'prompts that fell back to rules: 0' in logs.out, logs.out
    rows = read_manifest(out)
    assert len(rows) == 8 and {r['rewriter'] for r in rows} == {'llm:m'}
    assert {r['prompt_source'] for r in rows} == {'llm'} and not any(r['fell_back'] for r in rows)
    assert n_req == 4 + 1 + 8                       # four failures, the probe's answer, one request per item
    print(f'--rewriter {mode} after four transient failures: {secs:.1f} s')
    assert secs < 20
