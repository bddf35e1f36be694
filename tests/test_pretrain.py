"Synthetic pretraining: the command line (stop, resume, refuse other settings), the shipped checkpoint as package data"
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from cvlue_nb.checkpoint import read_checkpoint, reference_keys
from cvlue_nb.pretrain import (SHIPPED, CKPT_NAME, checkpoint_meta, checkpoint_tokenizer, key_patterns, resolve_init,
                               shipped_checkpoint)
from cvlue_nb.run import resolve_config

ROOT = Path(__file__).resolve().parent.parent
SMALL = ['n_scenes=64', 'vocab_scenes=100', 'steps=4', 'box_warmup=2', 'warmup_scenes=16', 'batch_size=8', 'ckpt_every=2', 'log_every=2',
         'fingerprint_steps=2', 'exclude={seed: 3, n_train: 20, n_val: 5, n_test: 5}']

def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'cvlue_nb.pretrain', *args], capture_output=True, text=True,
                          env=env, timeout=300, **kw)

def test_cli_stops_resumes_and_refuses_other_settings(tmp_path):
    "--stop-at leaves a resumable folder; the same command finishes it; other settings in that folder are refused"
    out = tmp_path/'pt'
    r = _cli('--out', str(out), '--stop-at', '2', '--quiet', *SMALL)
    assert r.returncode == 0, r.stderr
    assert 'stopped at step 2' in r.stdout and (out/'checkpoints'/'last.pt').exists() and not (out/CKPT_NAME).exists()
    r = _cli('--out', str(out), '--quiet', *SMALL)
    assert r.returncode == 0, r.stderr
    sd = read_checkpoint(out/CKPT_NAME)
    assert key_patterns(sd) == key_patterns(e['name'] for e in reference_keys('cclm'))
    meta = json.loads((out/CKPT_NAME).with_suffix('.json').read_text(encoding='utf-8'))
    assert meta['steps_done'] == 4 and meta['fingerprint']['steps'] == 2 and meta == checkpoint_meta(out/CKPT_NAME)
    r = _cli('--out', str(out), '--quiet', *SMALL[:-1], 'lr=0.01')
    assert r.returncode == 1 and 'other settings' in r.stderr

def test_shipped_checkpoint_is_package_data():
    "synth-tiny is found inside the installed package, listed in setup.py and MANIFEST.in, a few MB"
    p = shipped_checkpoint('synth-tiny')
    assert p == resolve_init('synth-tiny') and p.name == SHIPPED['synth-tiny'] and p.with_suffix('.json').is_file()
    assert p.stat().st_size < 8e6
    assert "'pretrained/*.safetensors'" in (ROOT/'setup.py').read_text() and 'cvlue_nb/pretrained' in (ROOT/'MANIFEST.in').read_text()
    assert len(checkpoint_tokenizer('synth-tiny')) == len(checkpoint_meta(p)['vocab'])
    assert resolve_init('none') is None and resolve_init(None) is None and resolve_init('x.th') == Path('x.th')

def test_presets_fine_tune_from_it():
    "Every synthetic preset starts from synth-tiny; init=none keeps the from-scratch runs"
    for task in ('itr', 'vqa', 'vd', 'vg'):
        assert resolve_config(task).init == 'synth-tiny'
        assert resolve_config(task, overrides={'init': 'none'}).init is None
        assert resolve_config(task, 'cvlue', overrides={'data_root': '.'}).init is None
