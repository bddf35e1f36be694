"The synthetic CVLUE benchmark from the command line: layout, determinism, validity, and gold-as-prediction = 1.0."
import hashlib, json, os, subprocess, sys
from pathlib import Path
import pytest

ENV = dict(os.environ, OMP_NUM_THREADS='1')
ARGS = ['--seed', '3', '--n-images', '60', '--quiet']  # 60 / 12 / 12 images

def _synth(out, *args):
    return subprocess.run([sys.executable, '-m', 'cvlue_nb.synth', '--out', str(out), *args],
                          capture_output=True, text=True, env=ENV)

def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob('*')) if p.is_file()}

def _load(p): return json.loads(Path(p).read_text(encoding='utf-8'))

@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth')/'a'
    r = _synth(out, *ARGS)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout.strip().splitlines()[-1])  # last line: the config as JSON
    assert cfg['complete'] and cfg['seed'] == 3 and cfg['n_images'] == {'train': 60, 'val': 12, 'test': 12}
    return out

def test_layout(ds):
    want = ['IC/train.json', 'IC/val.json', 'IC/test_images.json', 'IC/test_captions.json', 'IC/test_gold.json',
            'VQA/train.json', 'VQA/val.json', 'VQA/test.json', 'VQA/test_gold.json', 'VQA/answer_list.json',
            'VG/train.json', 'VG/val.json', 'VG/test.json', 'VG/test_gold.json',
            'VD/train.json', 'VD/val.json', 'VD/test.json', 'VD/test_gold.json', 'synth_config.json',
            'scenes/train.json', 'scenes/val.json', 'scenes/test.json']
    for f in want: assert (ds/f).is_file(), f
    for split, n in [('train', 60), ('val', 12), ('test', 12)]:
        assert len(list((ds/'images'/split).glob('*.png'))) == n
    for r in _load(ds/'IC'/'train.json'):
        assert r['image'].startswith('images/train/') and (ds/r['image']).is_file() and len(r['caption']) == 5

def test_same_seed_same_bytes(ds, tmp_path):
    assert _synth(tmp_path/'b', *ARGS).returncode == 0
    assert _digest(ds) == _digest(tmp_path/'b')
    assert _synth(tmp_path/'c', '--seed', '4', '--n-images', '60', '--quiet').returncode == 0
    assert _digest(ds)['IC/train.json'] != _digest(tmp_path/'c')['IC/train.json']

def test_rerun_replaces_and_refuses_foreign_folder(tmp_path):
    assert _synth(tmp_path/'d', '--n-images', '10', '--quiet').returncode == 0
    assert _synth(tmp_path/'d', '--n-images', '5', '--quiet').returncode == 0  # our own folder: replaced
    assert len(list((tmp_path/'d'/'images'/'train').glob('*.png'))) == 5
    (tmp_path/'e').mkdir(); (tmp_path/'e'/'mine.txt').write_text('x')
    r = _synth(tmp_path/'e', '--n-images', '5', '--quiet')
    assert r.returncode == 1 and 'not empty' in r.stderr and 'Traceback' not in r.stderr
    assert (tmp_path/'e'/'mine.txt').read_text() == 'x'

def test_texts_true_unique_and_unambiguous(ds):
    from cvlue_nb.synth import load_scenes, holds, select
    for split in ('train', 'val', 'test'):
        recs = load_scenes(ds/'scenes'/f'{split}.json')
        caps = [c['text'] for r in recs for c in r['captions']]
        assert len(caps) == len(set(caps)) == 5 * len(recs)          # unique across the whole split
        for r in recs:
            for c in r['captions']: assert all(holds(f, r['scene']) for f in c['facts']), c['text']
            for ref in r['refs']: assert select(r['scene'], ref['desc']) == [ref['obj']], ref['text']
    gold = _load(ds/'VG'/'test_gold.json')
    scenes = {r['image']: r for r in _load(ds/'scenes'/'test.json')}
    for g in gold:  # the gold box is the box of the one object the expression names
        ref = next(x for x in scenes[g['image']]['refs'] if x['ref_id'] == g['ref_id'])
        assert g['bbox'] == scenes[g['image']]['objects'][ref['obj']]['box']

def test_vd_format(ds):
    train = _load(ds/'VD'/'train.json')
    assert all(len(d['dialog']) == 10 and all(isinstance(r['answer'], int) for r in d['dialog']) for d in train['dialogs'])
    test, gold = _load(ds/'VD'/'test.json'), _load(ds/'VD'/'test_gold.json')['data']
    assert len(test['dialogs']) == len(gold) == 12
    for d, g in zip(test['dialogs'], gold):
        assert g['dialog_id'] == len(d['dialog']) and 'answer' not in d['dialog'][-1]
        assert len(set(g['answer_options'])) == 100 and g['answer'] in g['answer_options']
        assert all(str(a) in test['id2answer'] for a in g['answer_options'])
        own = {r['answer'] for r in d['dialog'][:-1]}
        assert not (own & (set(g['answer_options']) - {g['answer']}))  # distractors come from other dialogs

def test_official_validator_finds_nothing(ds):
    from cvlue_nb.data import validate
    files = {'itr': ['IC/train.json', 'IC/val.json', 'IC/test_images.json', 'IC/test_captions.json', 'IC/test_gold.json'],
             'vqa': ['VQA/train.json', 'VQA/val.json', 'VQA/test.json', 'VQA/test_gold.json', 'VQA/answer_list.json'],
             'vg': ['VG/train.json', 'VG/val.json', 'VG/test.json', 'VG/test_gold.json'],
             'vd': ['VD/train.json', 'VD/val.json', 'VD/test.json', 'VD/test_gold.json']}
    for task, fs in files.items():
        for f in fs:
            probs = validate(task, ds/f, image_root=ds)
            assert not probs, f'{f}: {[str(p) for p in probs[:5]]}'

def _evaluate(*args):
    r = subprocess.run([sys.executable, '-m', 'cvlue_nb.evaluate', *map(str, args)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])

def test_gold_as_prediction_scores_one(ds, tmp_path):
    from cvlue_nb.metrics import (write_itr_submission, write_vqa_submission, write_vd_submission,
                                  write_vg_submission, vd_eval_records)
    gold = _load(ds/'IC'/'test_gold.json'); caps = _load(ds/'IC'/'test_captions.json')
    owner = {c: g['image'] for g in gold for c in g['caption']}
    assert len(owner) == len(caps)  # the official scorer keys gold captions by text: they must be unique
    i2t = {g['image']: g['caption'] + [c for c in caps if c not in g['caption']][:5] for g in gold}
    t2i = {c: [owner[c]] + [g['image'] for g in gold if g['image'] != owner[c]][:9] for c in caps}
    write_itr_submission(tmp_path, i2t, t2i)
    s = _evaluate('itr', '--gold', ds/'IC'/'test_gold.json', '--i2t', tmp_path/'i2t_submit.json', '--t2i', tmp_path/'t2i_submit.json')
    assert all(v == 1.0 for v in s.values()), s
    vqa = _load(ds/'VQA'/'test_gold.json')
    write_vqa_submission(tmp_path/'vqa.json', _load(ds/'VQA'/'test.json'), [r['answer'] for r in vqa])
    for strict in ([], ['--strict']):
        s = _evaluate('vqa', '--gold', ds/'VQA'/'test_gold.json', '--pred', tmp_path/'vqa.json', *strict)
        assert s['acc'] == 1.0 and s['n_total'] == len(vqa), s
    vd = _load(ds/'VD'/'test_gold.json')['data']
    recs = vd_eval_records(_load(ds/'VD'/'test.json'))
    write_vd_submission(tmp_path/'vd.json', recs, [[g['answer']] + [a for a in g['answer_options'] if a != g['answer']] for g in vd])
    s = _evaluate('vd', '--gold', ds/'VD'/'test_gold.json', '--pred', tmp_path/'vd.json')
    assert (s['r1'], s['r5'], s['r10']) == (1.0, 1.0, 1.0), s
    vg = _load(ds/'VG'/'test_gold.json')
    write_vg_submission(tmp_path/'vg.json', _load(ds/'VG'/'test.json'), [r['bbox'] for r in vg])
    s = _evaluate('vg', '--gold', ds/'VG'/'test_gold.json', '--pred', tmp_path/'vg.json')
    assert s['miou'] == 1.0 and s['acc50'] == 1.0, s
