"""Scorers (`cvlue_nb.metrics`) and the evaluation CLI (`python -m cvlue_nb.evaluate`).

1. The CLI on the organisers' examples (the CVLUE sample's `test_example/`, when present) prints the numbers the official CVLUE
   scorers print there.
2. Bad input makes the CLI print one clear line and exit 2, never a traceback.
3. Reference equivalence: each official scoring rule is transcribed here, independently and as literally as
   possible from the rules stated for the official scripts, and compared with our scorers on random inputs built
   to hit the quirks (shared captions, comma-retry keys, yes/no vocabulary, digits, punctuation, "吗"/"？" endings,
   empty boxes).
4. Writers: official structure, and write -> score equals the in-memory score.
"""
import json, random, re, runpy, string, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest
from cvlue_nb.core import DataError
from cvlue_nb.metrics import *

OFFICIAL = pytest.mark.sample('the scorers and writers on the official CVLUE examples (test_example/)')

@pytest.fixture
def ex(sample):
    "The organisers' test examples (gold files and official-format submissions)"
    return sample/'test_example'

def cli(*args):
    "Run the evaluation CLI; return (returncode, stdout, stderr)"
    r = subprocess.run([sys.executable, '-m', 'cvlue_nb.evaluate', *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr

def cli_inproc(capsys, *args):
    "Run the CLI exactly as `python -m` would (argv parsing included), in this process: no torch import per case"
    old, sys.argv = sys.argv, ['evaluate', *map(str, args)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)  # "found in sys.modules": we re-run it as __main__ on purpose
            runpy.run_module('cvlue_nb.evaluate', run_name='__main__')
        rc = 0
    except SystemExit as e: rc = e.code if isinstance(e.code, int) else 1
    finally: sys.argv = old
    out, err = capsys.readouterr()
    return rc, out, err

def cli_scores(*args):
    rc, out, err = cli(*args)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])

# ---------------------------------------------------------------------------------------------------------------
# 1. The official examples through the CLI
@OFFICIAL
def test_cli_itr_official_example(ex):
    s = cli_scores('itr', '--gold', ex/'IC/gold.json', '--i2t', ex/'IC/i2t_submit.json', '--t2i', ex/'IC/t2i_submit.json')
    assert s == dict(i2t_r1=0.5, i2t_r5=1.0, i2t_r10=1.0, t2i_r1=0.6, t2i_r5=1.0, t2i_r10=1.0)

@OFFICIAL
@pytest.mark.parametrize('strict,n_match', [(False, 6), (True, 5)])
def test_cli_vqa_official_example(ex, strict, n_match):
    s = cli_scores('vqa', '--gold', ex/'VQA/gold.json', '--pred', ex/'VQA/submit_VQA.json', *(['--strict'] if strict else []))
    assert s == dict(acc=n_match/9, n_match=n_match, n_total=9)

@OFFICIAL
def test_cli_vd_official_example(ex):
    assert cli_scores('vd', '--gold', ex/'VD/gold.json', '--pred', ex/'VD/submit_VD.json') == dict(r1=0.5, r5=1.0, r10=1.0, n=2)

@OFFICIAL
def test_cli_vg_official_example(ex):
    s = cli_scores('vg', '--gold', ex/'VG/gold.json', '--pred', ex/'VG/submit_VG.json')
    assert abs(s['miou'] - 0.4777310067517693) <= 1e-12 and s['n'] == 6 and 0 <= s['acc50'] <= 1

# ---------------------------------------------------------------------------------------------------------------
# 2. Bad input: one line on stderr naming the file/record, exit code 2, no traceback
def _write(p, obj):
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), encoding='utf-8')
    return p

VQA_GOLD = [{'image': 'a.png', 'question_id': 1, 'question': '有几只猫？', 'answer': '2'},
            {'image': 'a.png', 'question_id': 2, 'question': '猫是红色的吗？', 'answer': '是'}]

def _bad_cases(tmp):
    g = _write(tmp/'gold.json', VQA_GOLD)
    vdg = _write(tmp/'vd_gold.json', {'data': [{'image': 'a.png', 'dialog_id': 3, 'answer': 7},
                                               {'image': 'b.png', 'dialog_id': 3, 'answer': 7}]})
    vgg = _write(tmp/'vg_gold.json', [{'ref_id': 5, 'bbox': [0, 0, 9, 9]}])
    itrg = _write(tmp/'itr_gold.json', [{'image': 'a.png', 'caption': ['一只猫']}])
    return {  # name: (args, what stderr must contain)
        'malformed': (['vqa', '--gold', g, '--pred', _write(tmp/'trunc.json', '[{"question_id": 1, "answer": ')],
                      ['trunc.json', 'truncated JSON']),
        'length':    (['vqa', '--gold', g, '--pred', _write(tmp/'short.json', [{'question_id': 1, 'answer': '2'}])],
                      ['short.json', '1 predictions for 2 gold questions']),
        'id_order':  (['vd', '--gold', vdg, '--pred', _write(tmp/'vd.json', [
                          {'image': 'b.png', 'dialog_id': 3, 'answer_sort': [7]}, {'image': 'a.png', 'dialog_id': 3, 'answer_sort': [7]}])],
                      ['vd.json[0].image', "'b.png' does not match image 'a.png'"]),
        'missing':   (['vg', '--gold', vgg, '--pred', _write(tmp/'vg.json', [{'ref_id': 5}])],
                      ["vg.json[0].bbox: missing key 'bbox'"]),
        'wrongtype': (['vqa', '--gold', g, '--pred', _write(tmp/'none.json', [{'question_id': 1, 'answer': None},
                                                                              {'question_id': 2, 'answer': '是'}])],
                      ['none.json[0].answer', 'expected str']),
        'unknown':   (['itr', '--gold', itrg, '--i2t', _write(tmp/'i2t.json', {'b.png': ['一只猫']}),
                       '--t2i', _write(tmp/'t2i.json', {'一只猫': ['a.png']})],
                      ["i2t.json: image 'b.png' is not in the gold file"]),
        'nofile':    (['vg', '--gold', tmp/'nope.json', '--pred', tmp/'vg.json'], ['nope.json: file not found']),
        'usage':     (['itr', '--gold', itrg, '--pred', tmp/'i2t.json'], ['itr needs --i2t and --t2i']),
    }

@pytest.mark.parametrize('case,subproc', [('malformed', True), ('id_order', True), ('length', False), ('missing', False),
                                          ('wrongtype', False), ('unknown', False), ('nofile', False), ('usage', False)])
def test_cli_bad_input(tmp_path, capsys, case, subproc):
    "Two cases run in a real subprocess (no traceback escapes the process); the rest in-process, to stay fast"
    args, needles = _bad_cases(tmp_path)[case]
    rc, out, err = cli(*args) if subproc else cli_inproc(capsys, *args)
    assert rc == 2, (rc, out, err)
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith('error: ') and all(n in err for n in needles), err

# ---------------------------------------------------------------------------------------------------------------
# 3. Reference equivalence with independent transcriptions of the official rules
YES = ['是', '是的', '有', '有的', '一样', '一致', '相同']
NO = ['否', '不是', '没有', '不一样', '不一致', '不相同']
NEG = NO + ['不']

def oracle_itr(gold, i2t, t2i):
    "eval_itr.py's rules: gold keyed by text, rank = best position of any gold item, R@k over predicted keys"
    img2caps, cap2imgs = {}, {}
    for rec in gold:
        img2caps[rec['image']] = rec['caption']
        for c in rec['caption']: cap2imgs.setdefault(c, [])
        for c in rec['caption']:
            if rec['image'] not in cap2imgs[c]: cap2imgs[c].append(rec['image'])
    def rank(golds, ranked):
        best = 100
        for g in golds:
            if g in ranked: best = min(best, ranked.index(g))
        return best
    ri = [rank(img2caps[img], caps) for img, caps in i2t.items()]
    rt = []
    for cap, imgs in t2i.items():
        if cap not in cap2imgs: cap = ','.join(cap.split())
        rt.append(rank(cap2imgs[cap], imgs))
    res = {}
    for name, ranks in [('i2t', ri), ('t2i', rt)]:
        for k in (1, 5, 10): res[f'{name}_r{k}'] = sum(1 for r in ranks if r < k) / len(ranks)
    return res

def oracle_vqa_ok(pred, gold, strict):
    "eval_vqa.py's rules for one question"
    norm = lambda s: s.lower().strip().strip(string.punctuation).strip('。')
    p = norm(pred)
    if p.endswith('？') or p.endswith('吗'): return False
    ok = p == norm(gold) or gold in re.findall(r'\d+', pred)
    if not strict:
        if gold in YES and p in YES: ok = True
        elif gold in NO and p in NO: ok = True
        elif gold in YES and gold in p:
            if not [w for w in NEG if w in p]: ok = True
        elif gold in NO and gold in p: ok = True
    return ok

def oracle_vd(gold, pred):
    "eval_vd.py's rules: R@k of the gold id in answer_sort[:k]"
    n = len(gold); top1 = top5 = top10 = 0
    for g, p in zip(gold, pred):
        ids = p['answer_sort'][:10]
        top1 += g['answer'] == ids[0]; top5 += g['answer'] in ids[:5]; top10 += g['answer'] in ids[:10]
    return dict(r1=top1/n, r5=top5/n, r10=top10/n, n=n)

def oracle_iou(g, p):
    "eval_vg.py's rules: [x,y,w,h] -> corners, +1 pixel on intersection and areas"
    gx1, gy1, gx2, gy2 = g[0], g[1], g[0] + g[2], g[1] + g[3]
    px1, py1, px2, py2 = p[0], p[1], p[0] + p[2], p[1] + p[3]
    inter = max(0, min(gx2, px2) - max(gx1, px1) + 1) * max(0, min(gy2, py2) - max(gy1, py1) + 1)
    return inter / float((gx2 - gx1 + 1) * (gy2 - gy1 + 1) + (px2 - px1 + 1) * (py2 - py1 + 1) - inter)

def oracle_vg(gold, pred):
    ious = [0 if len(p['bbox']) == 0 else oracle_iou(g['bbox'], p['bbox']) for g, p in zip(gold, pred)]
    return sum(ious) / len(gold), sum(1 for v in ious if v > 0.5) / len(gold)

CAPTIONS = ['一只猫', '两只狗', '红色,圆形', '大的,蓝色,方块', '三头牛', 'a,b', '草地上的牛', '熊猫在吃竹子',
            '一只熊猫在地上躺着，一只熊猫在吃果子', '左边,有,树']

def random_itr(rng):
    images = [f'images/val/{i}.png' for i in range(rng.randint(1, 8))]
    gold = [{'image': im, 'caption': rng.sample(CAPTIONS, rng.randint(1, 5))} for im in images]
    if rng.random() < 0.2: gold.append({'image': images[0], 'caption': rng.sample(CAPTIONS, 2)})  # image listed twice
    gold_caps = sorted({c for r in gold for c in r['caption']})
    i2t = {im: [rng.choice(CAPTIONS) for _ in range(rng.randint(0, 14))] for im in rng.sample(images, rng.randint(1, len(images)))}
    t2i = {}
    for c in rng.sample(gold_caps, rng.randint(1, len(gold_caps))):
        key = rng.choice([' '.join(c.split(',')), '  '.join(c.split(',')) + ' ']) if ',' in c and rng.random() < 0.5 else c
        t2i[key] = [rng.choice(images + ['images/val/other.png']) for _ in range(rng.randint(0, 12))]
    return gold, i2t, t2i

def test_itr_matches_official_rules():
    rng = random.Random(0)
    for _ in range(400):
        gold, i2t, t2i = random_itr(rng)
        assert score_itr(gold, i2t, t2i) == oracle_itr(gold, i2t, t2i), (gold, i2t, t2i)

def test_itr_unknown_keys_are_errors_like_official():
    gold = [{'image': 'a.png', 'caption': ['红色,圆形']}]
    assert score_itr(gold, {'a.png': []}, {'红色 圆形': ['a.png']})['t2i_r1'] == 1.0  # rescued by the comma retry
    with pytest.raises(KeyError): oracle_itr(gold, {'a.png': []}, {'红色，圆形': []})
    with pytest.raises(DataError, match='not in the gold file'): score_itr(gold, {'a.png': []}, {'红色，圆形': []})

TOKENS = YES + NO + ['不', '吗', '？', '?', '。', '.', '!', ',', ' ', '2', '12', '3', '个', '两', '红色', 'Red', 'red',
                     '在左边', '人', '有点', '０', '２']

def random_answer(rng, n_max):
    return ''.join(rng.choice(TOKENS) for _ in range(rng.randint(0, n_max)))

def test_vqa_matches_official_rules():
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(1, 12)
        gold = [{'image': 'x.png', 'question_id': 100 + i, 'question': '？',
                 'answer': rng.choice(YES + NO + ['2', '12', '红色', 'red', '在左边']) if rng.random() < 0.7 else random_answer(rng, 2)}
                for i in range(n)]
        pred = [{'question_id': g['question_id'], 'answer': rng.choice([g['answer'] + random_answer(rng, 2), random_answer(rng, 4)])}
                for g in gold]
        for strict in (False, True):
            want = sum(oracle_vqa_ok(p['answer'], g['answer'], strict) for g, p in zip(gold, pred))
            assert score_vqa(gold, pred, strict=strict) == dict(acc=want / n, n_match=want, n_total=n), (gold, pred, strict)

def test_vqa_rule_corner_cases():
    for pred, gold in [('是 .', '是'), ('２个', '２'), ('不是的吗', '不是'), ('有的。', '有'), ('没有?', '没有'), ('', ''),
                       ('12个', '2'), ('是不', '是'), ('有', '否'), ('YES.', 'yes')]:
        for strict in (False, True):
            assert vqa_correct(pred, gold, strict) == oracle_vqa_ok(pred, gold, strict), (pred, gold, strict)

def test_vd_matches_official_rules():
    rng = random.Random(2)
    for _ in range(300):
        n = rng.randint(1, 6)
        gold = [{'image': f'{i}.png', 'dialog_id': rng.randint(1, 10), 'answer': rng.randint(0, 30)} for i in range(n)]
        pred = [{'image': g['image'], 'dialog_id': g['dialog_id'], 'answer_sort': rng.sample(range(31), rng.randint(1, 31))}
                for g in gold]
        assert score_vd({'data': gold}, pred) == oracle_vd(gold, pred)

def random_box(rng):
    if rng.random() < 0.5: return [rng.randint(0, 60), rng.randint(0, 60), rng.randint(0, 40), rng.randint(0, 40)]
    return [rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(0, 40), rng.uniform(0, 40)]

def test_vg_matches_official_rules():
    rng = random.Random(3)
    for _ in range(300):
        n = rng.randint(1, 8)
        gold = [{'ref_id': i, 'bbox': random_box(rng)} for i in range(n)]
        pred = [{'ref_id': i, 'bbox': [] if rng.random() < 0.15 else
                 (list(g['bbox']) if rng.random() < 0.1 else random_box(rng))} for i, g in enumerate(gold)]
        s, (miou, acc50) = score_vg(gold, pred), oracle_vg(gold, pred)
        assert abs(s['miou'] - miou) <= 1e-12 and s['acc50'] == acc50 and s['n'] == n

# ---------------------------------------------------------------------------------------------------------------
# 4. Writers: official structure; write -> score == in-memory score
@OFFICIAL
def test_writers_reproduce_official_submission_files(ex, tmp_path):
    rd = lambda p: json.loads(Path(p).read_text(encoding='utf-8'))
    i2t, t2i = rd(ex/'IC/i2t_submit.json'), rd(ex/'IC/t2i_submit.json')
    assert [rd(p) for p in write_itr_submission(tmp_path, i2t, t2i)] == [i2t, t2i]
    sub = rd(ex/'VQA/submit_VQA.json')
    assert rd(write_vqa_submission(tmp_path/'v.json', rd(ex/'VQA/test_VQA.json'), [r['answer'] for r in sub])) == sub
    sub = rd(ex/'VD/submit_VD.json')
    recs = vd_eval_records(rd(ex/'VD/test_VD.json'))
    assert rd(write_vd_submission(tmp_path/'d.json', recs, [r['answer_sort'] for r in sub])) == sub
    assert all(len(r['answer_sort']) == 100 for r in rd(tmp_path/'d.json'))
    sub = rd(ex/'VG/submit_VG.json')
    assert rd(write_vg_submission(tmp_path/'g.json', rd(ex/'VG/test_VG.json'), [r['bbox'] for r in sub])) == sub

def test_itr_write_then_cli_score_equals_in_memory(tmp_path):
    rng = np.random.default_rng(4)
    images = [f'images/test/{i}.png' for i in range(12)]
    gold = [{'image': im, 'caption': [f'图{i}的描述{j}' for j in range(5)]} for i, im in enumerate(images)]
    captions = [c for r in gold for c in r['caption']]
    sims = rng.normal(size=(len(images), len(captions))) + 2.0 * np.kron(np.eye(12), np.ones((1, 5)))
    i2t, t2i = itr_rankings(sims, images, captions, k=10)
    assert all(len(v) == 10 for v in i2t.values()) and all(len(v) == 10 for v in t2i.values())
    p_i2t, p_t2i = write_itr_submission(tmp_path, i2t, t2i)
    _write(tmp_path/'gold.json', gold)
    assert cli_scores('itr', '--gold', tmp_path/'gold.json', '--i2t', p_i2t, '--t2i', p_t2i) == score_itr(gold, i2t, t2i)

def test_vqa_vd_vg_write_then_score_equals_in_memory(tmp_path):
    rng = random.Random(5)
    gold = [{'image': 'a.png', 'question_id': i, 'question': '？', 'answer': rng.choice(YES + NO + ['2'])} for i in range(30)]
    answers = [random_answer(rng, 3) for _ in gold]
    p = write_vqa_submission(tmp_path/'submit_VQA.json', [dict(g, answer='') for g in gold], answers)
    _write(tmp_path/'vqa_gold.json', gold)
    mem = score_vqa(gold, [{'question_id': g['question_id'], 'answer': a} for g, a in zip(gold, answers)])
    assert score_vqa_files(tmp_path/'vqa_gold.json', p) == mem

    opts = [rng.sample(range(1000), 100) for _ in range(5)]
    vgold = [{'image_id': i, 'image': f'{i}.png', 'caption': 'c', 'dialog_id': 10, 'question': i, 'answer_options': o,
              'answer': rng.choice(o)} for i, o in enumerate(opts)]
    sorts = [rng.sample(o, 100) for o in opts]
    p = write_vd_submission(tmp_path/'submit_VD.json', vgold, sorts)
    _write(tmp_path/'vd_gold.json', {'data': vgold})
    assert score_vd_files(tmp_path/'vd_gold.json', p) == score_vd({'data': vgold}, [{'image': g['image'], 'dialog_id': 10,
                                                                                    'answer_sort': s} for g, s in zip(vgold, sorts)])
    ggold = [{'ref_id': i, 'image': 'a.png', 'text': 't', 'width': 100, 'height': 80, 'bbox': random_box(rng)} for i in range(20)]
    boxes = [[] if i % 7 == 0 else random_box(rng) for i in range(20)]
    p = write_vg_submission(tmp_path/'submit_VG.json', [dict(g, bbox=[]) for g in ggold], boxes)
    _write(tmp_path/'vg_gold.json', ggold)
    mem = score_vg(ggold, [{'ref_id': g['ref_id'], 'bbox': [float(v) for v in b]} for g, b in zip(ggold, boxes)])
    assert score_vg_files(tmp_path/'vg_gold.json', p) == mem

@OFFICIAL
@pytest.mark.skipif(__import__('shutil').which('cvlue-evaluate') is None, reason='package not installed with its console scripts')
def test_console_script_exit_codes(ex):
    r = subprocess.run(['cvlue-evaluate', 'vd', '--gold', str(ex/'VD/gold.json'), '--pred', str(ex/'VD/submit_VD.json')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])['r1'] == 0.5, r.stderr
    r = subprocess.run(['cvlue-evaluate', 'vd', '--gold', str(ex/'VD/gold.json'), '--pred', str(ex/'VG/submit_VG.json')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith('error: ') and 'Traceback' not in r.stderr
