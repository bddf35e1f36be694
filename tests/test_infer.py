"""Integration tests of `cvlue_nb.infer`: a 2-process (gloo) evaluation must give the same submissions as 1 process."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch

from cvlue_nb.synth import generate
from cvlue_nb.model import X2VLM, X2VLMConfig, build_char_tokenizer
from cvlue_nb.infer import evaluate_split
from cvlue_nb.tasks import split_files
from cvlue_nb.core import CvlueError, read_json

TASKS = ('itr', 'vqa', 'vd', 'vg')
TASK_DIR = dict(itr='IC', vqa='VQA', vd='VD', vg='VG')
SUBMISSIONS = dict(itr=['i2t_submit.json', 't2i_submit.json'], vqa=['submit_VQA.json'], vd=['submit_VD.json'],
                   vg=['submit_VG.json'])
SETTINGS = dict(batch_size=3, k_test=8, chunk=100)

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from cvlue_nb.engine import setup_distributed, cleanup_distributed
    from cvlue_nb.model import X2VLM
    from cvlue_nb.infer import evaluate_split, main
    data, models, out = map(Path, sys.argv[1:4]); settings = json.loads(sys.argv[4])
    rank, world, device = setup_distributed('gloo')
    res = {}
    for task in ('itr', 'vqa', 'vd'):
        m = X2VLM.from_pretrained(models/task)
        res[task] = evaluate_split(task, m, m.tokenizer, data, out_dir=out, **settings)
    if rank == 0:  # inside the group, rank 0 alone evaluates everything
        m = X2VLM.from_pretrained(models/'vg')
        res['vg_rank0_only'] = evaluate_split('vg', m, m.tokenizer, data, out_dir=out/'rank0', distributed=False, **settings)
    (out/f'metrics_rank{rank}.json').write_text(json.dumps(res))
    # the command line under 2 processes (it joins the group already set up and destroys it at the end)
    main(['--task', 'vg', '--model', str(models/'vg'), '--data', str(data), '--out', str(out), 'progress=false']
         + [f'{k}={v}' for k, v in settings.items()])
''')


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    "A small synthetic benchmark (odd item counts) and a saved tiny model per task"
    root = tmp_path_factory.mktemp('infer')
    data = root/'synth'
    generate(data, seed=1, n_train=4, n_val=2, n_test=7, size=64, progress=False)
    texts = read_json(data/'IC/test_captions.json') + [r['question'] for r in read_json(data/'VQA/test.json')]
    texts += list(read_json(data/'VQA/answer_list.json')) + [r['text'] for r in read_json(data/'VG/test.json')]
    vd = read_json(data/'VD/test.json'); texts += list(vd['id2question'].values()) + list(vd['id2answer'].values())
    tok = build_char_tokenizer(texts)
    for t in TASKS:
        torch.manual_seed(0); X2VLM(X2VLMConfig.tiny(t)).save_pretrained(root/'models'/t, tok)
    return root, data


def _run_1proc(root, data):
    out, res = root/'out1', {}
    for t in TASKS:
        m = X2VLM.from_pretrained(root/'models'/t)
        res[t] = evaluate_split(t, m, m.tokenizer, data, out_dir=out, **SETTINGS)
    return out, res


def test_two_processes_match_one(bench):
    "2 gloo processes: every item predicted once, same files and metrics as 1 process, metrics on every rank"
    root, data = bench
    out1, res1 = _run_1proc(root, data)
    out2 = root/'out2'; out2.mkdir()
    script = root/'eval2.py'; script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script),
                        str(data), str(root/'models'), str(out2), json.dumps(SETTINGS)],
                       capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (read_json(out2/f'metrics_rank{r}.json') for r in (0, 1))
    vg_cli = json.loads(p.stdout.strip().splitlines()[-1])   # the CLI prints the metrics last (rank 0)
    assert r0.pop('vg_rank0_only') == pytest.approx(res1['vg'])   # distributed=False: no collective, same result
    r0['vg'] = r1['vg'] = vg_cli
    assert r0 == r1                                     # every rank returns the metrics
    for t in TASKS:
        for name in SUBMISSIONS[t]:
            a, b = read_json(out1/name), read_json(out2/name)
            if t == 'vg':
                assert [r['ref_id'] for r in a] == [r['ref_id'] for r in b]
                assert all(abs(x - y) < 1e-3 for ra, rb in zip(a, b) for x, y in zip(ra['bbox'], rb['bbox']))
            else: assert a == b, f'{t}: {name} differs between 1 and 2 processes'
        for k, v in res1[t].items(): assert r0[t][k] == pytest.approx(v, abs=1e-6), (t, k)
    # no duplicated or missing items: one prediction per gold record, in gold order
    assert [r['question_id'] for r in read_json(out2/'submit_VQA.json')] == [r['question_id'] for r in read_json(data/'VQA/test_gold.json')]
    assert [r['dialog_id'] for r in read_json(out2/'submit_VD.json')] == [r['dialog_id'] for r in read_json(data/'VD/test_gold.json')['data']]
    assert len(read_json(out2/'i2t_submit.json')) == 7 and len(read_json(out2/'t2i_submit.json')) == 35


def test_gold_as_prediction_scores_perfectly(bench):
    "The written submission formats score like gold when the gold answers are put in them"
    from cvlue_nb.evaluate import evaluate
    root, data = bench
    out = root/'out1'
    if not (out/'submit_VD.json').exists(): _run_1proc(root, data)
    gold = read_json(data/'VD/test_gold.json')['data']
    sub = read_json(out/'submit_VD.json')
    for s, g in zip(sub, gold): s['answer_sort'] = [g['answer']] + [a for a in s['answer_sort'] if a != g['answer']]
    (root/'vd_perfect.json').write_text(json.dumps(sub))
    assert evaluate('vd', data/'VD/test_gold.json', root/'vd_perfect.json')['r1'] == 1.0
    sub = read_json(out/'submit_VQA.json')
    for s, g in zip(sub, read_json(data/'VQA/test_gold.json')): s['answer'] = g['answer']
    (root/'vqa_perfect.json').write_text(json.dumps(sub, ensure_ascii=False))
    assert evaluate('vqa', data/'VQA/test_gold.json', root/'vqa_perfect.json', strict=True)['acc'] == 1.0
    gold = {r['image']: r['caption'] for r in read_json(data/'IC/test_gold.json')}
    i2t = {img: gold[img] + [c for c in caps if c not in gold[img]] for img, caps in read_json(out/'i2t_submit.json').items()}
    (root/'i2t_perfect.json').write_text(json.dumps(i2t, ensure_ascii=False))
    assert evaluate('itr', data/'IC/test_gold.json', i2t=root/'i2t_perfect.json', t2i=out/'t2i_submit.json')['i2t_r1'] == 1.0


@pytest.mark.sample('split_files on the official test_example layout')
def test_cvlue_layout_files(sample):
    "The official CVLUE test file names are found (the sample ships no test images, so nothing is predicted)"
    root = sample
    fs = split_files('vqa', root/'test_example', answer_list=root/'example/VQA/answer_list.json')
    assert (fs['records'].name, fs['gold'].name, fs['answer_list'].name) == ('test_VQA.json', 'gold.json', 'answer_list.json')
    fs = split_files('itr', root/'test_example')
    assert (fs['images'].name, fs['captions'].name, fs['gold'].name) == ('images.json', 'captions.json', 'gold.json')
    assert split_files('vd', root/'test_example')['records'].name == 'test_VD.json'
    assert split_files('vg', root/'test_example')['records'].name == 'test_VG.json'
    with pytest.raises(CvlueError, match='no vg dev input file'): split_files('vg', root/'test_example', 'dev')


def test_cli(bench, tmp_path, capsys):
    "The command line writes the submission and prints the metrics as the last line; bad input: exit 2, no traceback"
    from cvlue_nb.infer import main
    root, data = bench
    main(['--task', 'vg', '--model', str(root/'models'/'vg'), '--data', str(data), '--out', str(tmp_path/'vg'), 'batch_size=4'])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) == {'miou', 'acc50', 'n'} and res['n'] == len(read_json(data/'VG/test_gold.json'))
    assert (tmp_path/'vg'/'submit_VG.json').exists()
    for bad, msg in ((['--data', str(tmp_path/'nowhere')], 'no vqa test input file'), (['--data', str(data), 'k_tst=3'], "unknown setting 'k_tst'")):
        with pytest.raises(SystemExit) as e: main(['--task', 'vqa', '--model', str(root/'models'/'vqa'), '--out', str(tmp_path/'x')] + bad)
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
    recs = read_json(data/'VG/test.json'); recs[0]['image'] = 'images/test/gone.png'; recs[2]['image'] = 'images/test/lost.png'
    (tmp_path/'test.json').write_text(json.dumps(recs, ensure_ascii=False), encoding='utf-8')
    gold = read_json(data/'VG/test_gold.json'); gold[0]['image'], gold[2]['image'] = recs[0]['image'], recs[2]['image']
    (tmp_path/'test_gold.json').write_text(json.dumps(gold, ensure_ascii=False), encoding='utf-8')   # the gold of that test file
    with pytest.raises(SystemExit) as e:   # the preflight: every missing image named, before anything is predicted
        main(['--task', 'vg', '--model', str(root/'models'/'vg'), '--data', str(data), '--records', str(tmp_path/'test.json'),
              '--gold', str(tmp_path/'test_gold.json'), '--out', str(tmp_path/'bad')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'infer: 2 problems in the inputs' in err and 'gone.png' in err and 'lost.png' in err
    assert not (tmp_path/'bad').exists()


@pytest.mark.sample('evaluate_split on the real example records and images')
def test_real_sample_files(sample, tmp_path):
    "Real CVLUE records, images and the real 3,408-answer list go through evaluate_split (random tiny models)"
    root = sample
    ex = root/'example'
    texts = [c for r in read_json(ex/'IC/example.json') for c in r['caption']] + list(read_json(ex/'VQA/answer_list.json'))
    texts += [r['question'] for r in read_json(ex/'VQA/example.json')] + [r['text'] for r in read_json(ex/'VG/example.json')]
    tok = build_char_tokenizer(texts)
    for task, n_key, n in (('itr', None, None), ('vqa', 'n_total', 6), ('vg', 'n', 7)):
        torch.manual_seed(0); m = X2VLM(X2VLMConfig.tiny(task, vocab_size=len(tok))).eval()
        res = evaluate_split(task, m, tok, ex, 'val', out_dir=tmp_path, image_root=root, batch_size=4, k_test=8,
                             files=dict(records=ex/TASK_DIR[task]/'example.json'))
        if n_key: assert res[n_key] == n
        else: assert set(res) == {'i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10'}
    sub = read_json(tmp_path/'submit_VG.json')  # boxes are in the original pixel frame of each image
    for r, g in zip(sub, read_json(ex/'VG/example.json')):
        x, y, w, h = r['bbox']
        assert (r['width'], r['height']) == (g['width'], g['height']) and 0 <= x + w / 2 <= g['width'] and 0 <= y + h / 2 <= g['height']
    answers = set(read_json(ex/'VQA/answer_list.json'))
    assert all(r['answer'] in answers for r in read_json(tmp_path/'submit_VQA.json'))
