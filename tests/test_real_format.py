"""The organisers' VD training layout end to end through the command lines, and the preflight of a run.

The fixture is a tiny synthetic VD dataset whose training file is rewritten in the organisers' exact shape with
`cvlue_nb.data.write_vd_organiser_format`: a bare list of dialogs, integer ids, images named
`pics/mosaiced-nocopy/…`, and the id → text tables in a second file (under a name that is not found on its own, so
the `vd_tables` setting is needed). The test split keeps the official test shape (object with its own tables,
`images/…` paths, a gold file). It must validate, generate, train and evaluate with `path_map` and `vd_tables`.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_real_format.py
"""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from cvlue_nb import synth
from cvlue_nb.core import read_json, atomic_write_json
from cvlue_nb.data import read_vd, write_vd_organiser_format

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
MAP = 'pics/mosaiced-nocopy=images/train'
# a tiny model on --data cvlue (the real-data preset, baseline recipe): 2 steps, small context, no accumulation
TINY = ['model=tiny', 'image_res=32', 'batch_size=8', 'accumulate=1', 'max_steps=2', 'num_workers=0',
        'context_max_len=96', 'batch_size_test=8', 'log_every=1']


def run(module, *args, timeout=180):
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='module')
def vd(tmp_path_factory):
    "data root: VD/train.json in the organisers' shape + VD/qa_tables.json, VD/test.json + VD/test_gold.json, images/"
    d = tmp_path_factory.mktemp('vd')
    synth.generate(d, seed=0, n_train=12, n_val=1, n_test=4, size=32, progress=False)
    org = write_vd_organiser_format(read_vd(d/'VD'/'train.json'), d/'VD', name='train')
    assert org.path_map == MAP and org.tables.name == 'train_tables.json'
    org.tables.rename(d/'VD'/'qa_tables.json')   # not one of the names looked for beside the file
    return d


def test_organiser_file_has_the_organisers_shape(vd):
    dialogs = read_json(vd/'VD'/'train.json')
    assert isinstance(dialogs, list) and dialogs[0]['image'].startswith('pics/mosaiced-nocopy/')
    assert isinstance(dialogs[0]['dialog'][0]['question'], int)
    assert set(read_json(vd/'VD'/'qa_tables.json')) == {'id2question', 'id2answer'}


def test_validate(vd):
    ok = run('cvlue_nb.data', 'validate', '--task', 'vd', vd/'VD'/'train.json', '--vd-tables', vd/'VD'/'qa_tables.json',
             '--image-root', vd, '--path-map', MAP)
    assert ok.returncode == 0 and ': clean' in ok.stdout, ok.stdout + ok.stderr
    no_map = run('cvlue_nb.data', 'validate', '--task', 'vd', vd/'VD'/'train.json', '--vd-tables', vd/'VD'/'qa_tables.json',
                 '--image-root', vd)
    assert no_map.returncode == 1 and 'image file not found' in no_map.stdout
    no_tables = run('cvlue_nb.data', 'validate', '--task', 'vd', vd/'VD'/'train.json', '--image-root', vd, '--path-map', MAP)
    assert no_tables.returncode == 1 and 'needs the question/answer tables' in no_tables.stdout


def test_generate_train_evaluate_infer(vd, tmp_path):
    agi = tmp_path/'agi'
    g = run('cvlue_nb.generate', '--task', 'vd', '--data', vd, '--out', agi, '--backend', 'scene', '--rewriter', 'rules',
            '--size', 32, '--path-map', MAP, '--vd-tables', vd/'VD'/'qa_tables.json', '--no-progress')
    assert g.returncode == 0, g.stderr[-3000:]
    s = read_json(agi/'generate_summary.json')
    assert (s['generated'], s['failed']) == (12, 0), s
    assert read_json(agi/'generate_config.json')['path_map'] == MAP

    out = tmp_path/'run'
    t = run('cvlue_nb.train', '--task', 'vd', '--data', 'cvlue', '--data-root', vd, '--agi-dir', agi, '--out', out,
            'train_file=VD/train.json', 'vd_tables=VD/qa_tables.json', f'path_map={MAP}', *TINY)
    assert t.returncode == 0, t.stderr[-3000:]
    assert 'preflight: the inputs and their images checked' in t.stdout
    m, cfg = read_json(out/'metrics.json'), read_json(out/'config.json')
    assert m['step'] == 2 and 'kl' in m['final_losses'] and set(m['metrics']) >= {'r1', 'r5', 'r10'}
    assert (cfg['path_map'], cfg['vd_tables']) == (MAP, 'VD/qa_tables.json')
    sub = read_json(out/'submission'/'submit_VD.json')
    assert [r['image'] for r in sub] == [r['image'] for r in read_json(vd/'VD'/'test_gold.json')['data']]

    # the same test split in the organisers' bare-list shape (other image prefix, tables apart) through `infer`
    test = write_vd_organiser_format(vd/'VD'/'test.json', tmp_path/'org', prefix='pics/mosaiced-test/', name='test')
    test.tables.rename(tmp_path/'org'/'qa.json')
    gold = read_json(vd/'VD'/'test_gold.json')
    for r in gold['data']: r['image'] = r['image'].replace('images/test/', 'pics/mosaiced-test/')
    atomic_write_json(tmp_path/'org'/'gold.json', gold)
    i = run('cvlue_nb.infer', '--task', 'vd', '--model', out/'model', '--data', vd, '--out', tmp_path/'infer',
            '--records', test.dialogs, '--gold', tmp_path/'org'/'gold.json', '--vd-tables', tmp_path/'org'/'qa.json',
            '--path-map', test.path_map, 'image_res=32', 'context_max_len=96', 'first_token_twice=true', 'batch_size=8')
    assert i.returncode == 0, i.stderr[-3000:]
    assert json.loads(i.stdout.strip().splitlines()[-1]) == m['metrics']     # the run's own evaluation, file for file
    assert read_json(tmp_path/'infer'/'submit_VD.json')[0]['image'].startswith('pics/mosaiced-test/')


def test_preflight_stops_the_run_before_its_first_step(vd, tmp_path):
    "One missing test image and one missing answer-guided image: both named, nothing trained or written"
    agi = tmp_path/'agi'
    g = run('cvlue_nb.generate', '--task', 'vd', '--data', vd, '--out', agi, '--size', 32, '--path-map', MAP,
            '--vd-tables', vd/'VD'/'qa_tables.json', '--no-progress')
    assert g.returncode == 0, g.stderr[-3000:]
    gone_agi = sorted(agi.glob('images/*/*.png'))[0]
    gone_agi.unlink()
    test = read_json(vd/'VD'/'test.json'); test['dialogs'][1]['image'] = 'images/test/gone.png'
    atomic_write_json(tmp_path/'test.json', test)
    gold = read_json(vd/'VD'/'test_gold.json'); gold['data'][1]['image'] = 'images/test/gone.png'   # still the test file's gold
    atomic_write_json(tmp_path/'test_gold.json', gold)
    out = tmp_path/'run'
    t = run('cvlue_nb.train', '--task', 'vd', '--data', 'cvlue', '--data-root', vd, '--agi-dir', agi, '--out', out,
            'train_file=VD/train.json', 'vd_tables=VD/qa_tables.json', f'path_map={MAP}', f'test_file={tmp_path/"test.json"}',
            f'gold_file={tmp_path/"test_gold.json"}', *TINY)
    assert t.returncode == 1, t.stderr[-3000:]
    assert 'train: 2 problems in the inputs, found before the first step' in t.stderr, t.stderr[-3000:]
    assert str(vd/'images'/'test'/'gone.png') in t.stderr and str(gone_agi) in t.stderr and 'Traceback' not in t.stderr
    assert not (out/'checkpoints').exists() and not (out/'tb').exists() and not (out/'metrics.json').exists()


@pytest.mark.sample('a VQA run picks up the answer list beside the real files (example/VQA/answer_list.json)')
def test_vqa_run_ranks_the_layouts_answer_list(sample, tmp_path):
    out = tmp_path/'run'
    t = run('cvlue_nb.train', '--task', 'vqa', '--data', 'cvlue', '--data-root', sample/'example', '--out', out,
            f'image_root={sample}', 'train_file=VQA/example.json', 'test_file=VQA/example.json', 'agi=false',
            'model=tiny', 'image_res=32', 'batch_size=2', 'accumulate=1', 'max_steps=2', 'num_workers=0', 'vqa_k=8')
    assert t.returncode == 0, t.stderr[-3000:]
    assert 'ranked against the training answers' not in t.stdout and not (out/'answer_list.json').exists()
    answers = read_json(sample/'example'/'VQA'/'answer_list.json')
    sub = read_json(out/'submission'/'submit_VQA.json')
    assert len(sub) == 6 and all(r['answer'] in answers for r in sub)
    assert read_json(out/'metrics.json')['metrics']['n_total'] == 6
