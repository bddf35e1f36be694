"CLI round-trips of `python -m cvlue_nb.data validate` and property checks of the CVLUE data layer."
import json, os, re, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from PIL import Image
from cvlue_nb.core import CvlueError, DataError
from cvlue_nb.data import *

ROOT = Path(__file__).resolve().parent.parent

def wj(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding='utf-8'); return path

def assert_lines(out, path, *expected):
    "Each expected text appears on a line about `path`"
    lines = [l for l in out.splitlines() if l.startswith(str(path))]
    for e in expected: assert any(e in l for l in lines), f'{e!r} not reported for {path.name}:\n' + '\n'.join(lines)

# Every CLI case below is one `python -m cvlue_nb.data validate ...` process (the module does not import torch, so
# each takes well under a second). The module fixture `cli` runs them all; each test checks its own run. Cases on the
# real CVLUE sample (`REAL_CASES`) run only when it is here (conftest.py's `sample_dir`).
CASES, REAL_CASES = {}, {}
def case(f):
    "Register a builder: tmp dir → (argument list, files dict); its run is available as cli[f.__name__]"
    CASES[f.__name__] = f; return f
def real_case(f):
    "Register a builder on the real sample: sample folder → (argument list, files dict)"
    REAL_CASES[f.__name__] = f; return f

@pytest.fixture(scope='module')
def cli(tmp_path_factory, sample_dir):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    res = {}
    jobs = {name: build(tmp_path_factory.mktemp(name)) for name, build in CASES.items()}
    if sample_dir is not None: jobs |= {name: build(sample_dir) for name, build in REAL_CASES.items()}
    def run(args):
        r = subprocess.run([sys.executable, '-m', 'cvlue_nb.data', *map(str, args)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        return r.returncode, r.stdout
    for name, (args, files) in jobs.items():   # a builder may return several argument lists: then [(rc, out), ...]
        res[name] = ([run(a) for a in args], files) if args and isinstance(args[0], list) else (*run(args), files)
    return res

def test_import_does_not_load_torch():
    "The validate command must start fast: importing cvlue_nb.data leaves torch alone"
    code = 'import sys, cvlue_nb.data; assert "torch" not in sys.modules, "cvlue_nb.data imported torch"'
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)

# ---------------------------------------------------------------- real sample files: clean, exit 0
REAL = dict(itr=['test_example/IC/images.json', 'test_example/IC/captions.json', 'test_example/IC/gold.json', 'example/IC/example.json'],
            vqa=['test_example/VQA/test_VQA.json', 'test_example/VQA/gold.json', 'test_example/VQA/submit_VQA.json',
                 'example/VQA/example.json', 'example/VQA/answer_list.json'],
            vg=['test_example/VG/test_VG.json', 'test_example/VG/gold.json', 'example/VG/example.json'],
            vd=['test_example/VD/test_VD.json', 'test_example/VD/gold.json'])
def real_task_case(task):
    "Builder for the run over all of one task's real sample files"
    def build(s): return ['validate', '--task', task, *[s/f for f in REAL[task]]], REAL[task]
    return build
for _t in REAL: REAL_CASES[f'real_{_t}'] = real_task_case(_t)

@pytest.mark.sample('`validate` on the official example files')
@pytest.mark.parametrize('task', list(REAL))
def test_cli_real_samples_clean(sample, cli, task):
    rc, out, files = cli[f'real_{task}']
    assert rc == 0, out
    assert out.count(': clean') == len(files) and 'Traceback' not in out

@real_case
def real_images(s):
    return ['validate', '--task', 'vg', s/'example/VG/example.json', '--image-root', s], {}

@real_case
def real_missing_images(s):
    return ['validate', '--task', 'vqa', s/'test_example/VQA/test_VQA.json', '--image-root', s], {}

@pytest.mark.sample('`validate --image-root` on the official example images')
def test_cli_real_images_checked(sample, cli):
    "With --image-root the example images must exist and match width/height; the test images are not in the sample"
    rc, out, _ = cli['real_images']
    assert rc == 0 and out.strip().endswith('7 records: clean'), out
    rc, out, _ = cli['real_missing_images']
    assert rc == 1 and 'test_VQA.json[0].image: image file not found' in out and '9 problems in 9 records' in out, out

# ---------------------------------------------------------------- unreadable files: message, exit 1, no traceback
UNREADABLE = {'empty.json': b'', 'blank.json': b'  \n', 'gbk.json': '[{"text": "左边的狗"}]'.encode('gbk'),
              'trunc.json': b'[{"image": "a.png", "caption": ["x"', 'notjson.json': b'image,caption\na.png,x\n',
              'binary.json': bytes(range(256))}

@case
def unreadable(d):
    for n, b in UNREADABLE.items(): (d/n).write_bytes(b)
    return ['validate', '--task', 'itr', *[d/n for n in UNREADABLE], d/'missing.json', d], {n: d/n for n in UNREADABLE} | {'dir': d}

def test_cli_unreadable_files(cli):
    rc, out, f = cli['unreadable']
    assert rc == 1 and 'Traceback' not in out, out
    assert_lines(out, f['empty.json'], 'file is empty'); assert_lines(out, f['blank.json'], 'file is empty')
    assert_lines(out, f['gbk.json'], 'not UTF-8'); assert_lines(out, f['binary.json'], 'not UTF-8')
    assert_lines(out, f['trunc.json'], 'truncated JSON'); assert_lines(out, f['notjson.json'], 'malformed JSON')
    assert_lines(out, f['dir']/'missing.json', 'file not found'); assert 'is a folder' in out
    assert out.count('not checked, the file cannot be read') == len(UNREADABLE) + 2

@case
def usage(d): return ['validate', 'x.json'], {}

def test_cli_usage_errors(cli):
    rc, out, _ = cli['usage']
    assert rc == 2 and 'required: --task' in out and 'Traceback' not in out

# ---------------------------------------------------------------- bad records, one process per task
@case
def bad_itr(d):
    ok = dict(image='images/a.png', caption=['一只猫'] * 5, image_id=1)
    f = {n: wj(d/f'{n}.json', o) for n, o in dict(
        notlist={'image': 'a.png'}, notobj=[ok, 'x', 3],
        missing=[ok, {'image': 'images/b.png', 'image_id': 2}],
        types=[ok, dict(image=5, caption=['x'], image_id=2.5), dict(image='b.png', caption=[1, ''], image_id=True)],
        dup=[ok, {**ok, 'image': 'images/b.png'}],
        paths=[{**ok, 'image': '/etc/passwd'}, {**ok, 'image_id': 2, 'image': 'images/../../x.png'},
               {**ok, 'image_id': 3, 'image': 'C:\\pics\\a.png'}],
        emptycaps=[{**ok, 'caption': []}],
        images=['images/a.png', 'images/a.png', '../b.png'], captions=['一只猫', '', '一只猫', 7],
        gold=[dict(image='images/a.png', caption=['x']), dict(image='images/a.png', caption=['y'])]).items()}
    return ['validate', '--task', 'itr', *f.values()], f

def test_cli_bad_itr(cli):
    rc, out, f = cli['bad_itr']
    assert rc == 1 and 'Traceback' not in out, out
    assert_lines(out, f['notlist'], 'expected a JSON list of records, got an object')
    assert_lines(out, f['notobj'], 'notobj.json[1]: record is a string, not an object', 'notobj.json[2]: record is an integer')
    assert_lines(out, f['missing'], 'missing.json[1].caption: missing key')
    assert_lines(out, f['types'], 'types.json[1].image: wrong type: expected a string, got an integer',
                 'types.json[1].image_id: wrong type', 'types.json[2].caption[0]: wrong type', 'types.json[2].caption[1]: empty text',
                 'types.json[2].image_id: wrong type: expected an integer or a string, got a boolean')
    assert_lines(out, f['dup'], 'dup.json[1].image_id: duplicate image_id 1 (first at record 0)')
    assert_lines(out, f['paths'], 'paths.json[0].image: absolute image path', "paths.json[1].image: image path 'images/../../x.png' escapes",
                 'paths.json[2].image: absolute image path')
    assert_lines(out, f['emptycaps'], 'emptycaps.json[0].caption: no captions')
    assert_lines(out, f['images'], 'images.json[1]: duplicate image', 'images.json[2]: image path')
    assert_lines(out, f['captions'], 'captions.json[1]: empty text', 'captions.json[2]: duplicate caption', 'captions.json[3]: wrong type')
    assert_lines(out, f['gold'], 'gold.json[1].image: duplicate image')
    assert 'images.json: itr test images list file, 3 records: 2 problems in 2 records' in out

@case
def bad_vqa(d):
    ok = dict(image='images/a.png', question_id=1, question='几只猫？', answer='2')
    f = {n: wj(d/f'{n}.json', o) for n, o in dict(
        recs=[ok, {**ok, 'answer': ''}, {**ok, 'question_id': 2, 'question': ' '}, {**ok, 'question_id': '3'},
              {k: v for k, v in ok.items() if k != 'answer'} | {'question_id': 4}],
        answers={'是': 1, '否': 1, '': 2, '有': 'x'}).items()}
    return ['validate', '--task', 'vqa', *f.values()], f

def test_cli_bad_vqa(cli):
    rc, out, f = cli['bad_vqa']
    assert rc == 1, out
    assert_lines(out, f['recs'], 'recs.json[1].question_id: duplicate question_id 1', 'recs.json[1].answer: empty text',
                 'recs.json[2].question: empty text', "recs.json[3].question_id: wrong type: expected an integer, got a string",
                 'recs.json[4].answer: missing key')
    assert_lines(out, f['answers'], "[1].'否': duplicate answer id 1", "[2].'': empty text", "[3].'有': wrong type: expected an integer")

@case
def bad_vg(d):
    ok = dict(ref_id=1, image='images/a.png', text='左边的狗', width=100, height=50, bbox=[10, 10, 20, 20])
    recs = [ok, {**ok, 'ref_id': 2, 'bbox': [90, 10, 20, 20]}, {**ok, 'ref_id': 3, 'bbox': [10, 10, 0, 20]},
            {**ok, 'ref_id': 4, 'bbox': [10, 10, 20]}, {**ok, 'ref_id': 5, 'bbox': [10, '1', 20, 20]},
            {**ok, 'ref_id': 6, 'width': 0}, {**ok, 'ref_id': 1, 'text': ''}, {**ok, 'ref_id': 7, 'bbox': []},
            {**ok, 'ref_id': 8, 'bbox': [-5, 0, 10, 10]}, {**ok, 'ref_id': 9, 'height': 20.5}]
    return ['validate', '--task', 'vg', wj(d/'vg.json', recs)], {'vg': d/'vg.json'}

def test_cli_bad_vg(cli):
    rc, out, f = cli['bad_vg']; f = f['vg']
    assert rc == 1, out
    assert_lines(out, f, 'vg.json[1].bbox: box [90, 10, 20, 20] is outside the 100x50 image', 'vg.json[2].bbox: box has w <= 0',
                 'vg.json[3].bbox: box has 3 numbers', 'vg.json[4].bbox[1]: wrong type: expected a number', 'vg.json[5].width: width must be positive',
                 'vg.json[6].ref_id: duplicate ref_id 1', 'vg.json[6].text: empty text', 'vg.json[7].bbox: box has 0 numbers',
                 'vg.json[8].bbox: box [-5, 0, 10, 10] is outside', 'vg.json[9].height: wrong type')
    assert 'vg train/val (or gold) file, 10 records: 10 problems in 9 records' in out

@case
def bad_vd(d):
    tables = dict(id2question={'0': '是什么？', '1': '几只？', '2': ''}, id2answer={'0': '猫。', '1': '一只。', 'one': 'x'})
    dl = lambda **kw: dict(dict(image_id=1, image='images/a.png', caption='一只猫', dialog=[dict(question=0, answer=0)]), **kw)
    dialogs = [dl(), dl(image_id=1), dl(image_id=2, dialog=[dict(question=0), dict(question=9, answer=1)]),
               dl(image_id=3, dialog=[dict(question=0, answer=7), dict(question=1, answer=1, answer_options=[0, 0])]),
               dl(image_id=4, dialog=[]), dl(image_id=5, caption=''), dl(image_id=6, dialog=[dict(question=1)])]
    f = dict(vd=wj(d/'vd.json', dict(dialogs=dialogs, **tables)),
             gold=wj(d/'gold.json', dict(data=[dict(image_id=1, image='a.png', caption='c', dialog_id=0, question=1,
                                                    answer_options=[1, 2], answer=3)])),
             notab=wj(d/'notab.json', dict(dialogs=[])))
    return ['validate', '--task', 'vd', *f.values()], f

def test_cli_bad_vd(cli):
    rc, out, f = cli['bad_vd']
    assert rc == 1, out
    assert_lines(out, f['vd'], "vd.json.id2question['2']: empty text", "vd.json.id2answer['one']: id is not an integer",
                 'vd.json[1].image_id: duplicate image_id 1', 'vd.json[2].dialog[0].answer: missing key',
                 'vd.json[2].dialog[1].question: question id 9 not in id2question', 'vd.json[3].dialog[0].answer: answer id 7 not in id2answer',
                 'vd.json[3].dialog[1].answer_options[1]: answer id 0 repeats', 'vd.json[3].dialog[1].answer: answer 1 is not among answer_options',
                 'vd.json[4].dialog: no rounds', 'vd.json[5].caption: empty text', 'vd.json[6].dialog[0].answer_options: missing key')
    assert_lines(out, f['gold'], 'gold.json[0].dialog_id: dialog_id must be >= 1', 'gold.json[0].answer: answer 3 is not among answer_options')
    assert_lines(out, f['notab'], 'notab.json.id2question: missing key', 'notab.json.id2answer: missing key')

# ---------------------------------------------------------------- readers: raise one error, or skip and report
def test_readers_raise_or_skip(tmp_path):
    ok = dict(image='images/a.png', question_id=1, question='几只猫？', answer='2')
    f = wj(tmp_path/'v.json', [ok, {**ok, 'question_id': 2, 'question': ''}, {**ok, 'question_id': 1}])
    with pytest.raises(DataError, match=r'v.json\[1\].question: empty text \(and 1 more problem'): read_vqa(f)
    with pytest.warns(UserWarning, match='skipped 2 bad record'): items = read_vqa(f, skip_bad=True)
    assert [i.question_id for i in items] == [1] and items.skipped == [1, 2] and len(items.problems) == 2
    with pytest.raises(DataError, match='expected a JSON list'): read_vqa(wj(tmp_path/'o.json', {}), skip_bad=True)

def test_item_key_dicts_and_records():
    assert item_key('vqa', VQAItem('images/a.png', 3, 'q', 'a')) == 'images/a.png'
    assert item_key('itr', {'image_id': 7}) == '7' and item_key('vg', VGItem(12, 'a.png', 't', 4, 4, [])) == '12'
    assert item_key('vd', VDDialog(5, 'a.png', 'c', [])) == '5'

# ---------------------------------------------------------------- transforms and datasets on tiny images
def test_swap_left_right_is_an_involution():
    for t in ['最左边的狗', '左上方和右下方', '十岁左右', 'left hand, RIGHT side', '右手边的左边', '没有方向']:
        assert swap_left_right(swap_left_right(t)) == t
    assert swap_left_right('左右两边') == '左右两边' and swap_left_right('右手边') == '左手边'

def test_box_crop_keeps_box_property():
    for i in range(300):
        g = item_generator(7, 0, i); W, H = 50 + i % 37, 40 + i % 23
        x, y = (i * 7) % (W - 5), (i * 11) % (H - 5)
        box = [x + 0.3, y + 0.6, max(1.0, (W - x) * 0.6), max(1.0, (H - y) * 0.5)]
        geom = Geom(sample_box_crop(g, box, W, H), bool(i % 2))
        cx, cy, w, h = box_to_cxcywh(box, W, H, geom)
        assert -1e-9 <= cx - w/2 and cx + w/2 <= 1 + 1e-9 and -1e-9 <= cy - h/2 and cy + h/2 <= 1 + 1e-9
        l, t, r, b = geom.crop
        assert abs(w * (r - l) * W - box[2]) < 1e-6 and abs(h * (b - t) * H - box[3]) < 1e-6

def make_vg(tmp_path, n=6):
    (tmp_path/'images').mkdir()
    recs = []
    for i in range(n):
        img = Image.new('RGB', (40 + i, 30), (20 * i, 100, 200)); img.paste((255, 0, 0), (5, 5, 15, 20))
        img.save(tmp_path/'images'/f'{i}.png')
        recs.append(dict(ref_id=i, image=f'images/{i}.png', text='左边的红色方块', width=40 + i, height=30, bbox=[5, 5, 10, 15]))
    return read_vg(wj(tmp_path/'vg.json', recs), image_root=tmp_path)

def test_vg_dataset_flip_and_agi(tmp_path):
    items = make_vg(tmp_path)
    agi = {item_key('vg', it): tmp_path/it.image for it in items}
    ds = VGDataset(items, tmp_path, image_res=16, train=True, agi=agi, hflip=1.0)
    for k in range(len(ds)):
        s = ds[k]
        assert s['text'] == '右边的红色方块' and s['has_box'] and torch.equal(s['agi'], s['image'])
        assert s['box'][0] > 0.5 - 1e-6 or s['box'][0] + s['box'][2] / 2 > 0.5  # the left square is now on the right half
    ev = VGDataset(items, tmp_path, image_res=16)[0]
    assert ev['text'] == '左边的红色方块' and torch.allclose(ev['box'], torch.tensor([10/40, 12.5/30, 10/40, 15/30]))

def test_workers_do_not_change_samples(tmp_path):
    items = make_vg(tmp_path, n=8)
    ds = VGDataset(items, tmp_path, image_res=16, train=True, seed=5)
    ds.set_epoch(3)
    load = lambda nw: list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=nw, collate_fn=Collate()))
    for a, b in zip(load(0), load(2)):
        assert torch.equal(a['image'], b['image']) and torch.equal(a['box'], b['box']) and a['text'] == b['text']
    first = [ds[i]['box'] for i in range(len(ds))]; ds.set_epoch(4)
    assert any(not torch.equal(b, ds[i]['box']) for i, b in enumerate(first))  # a new epoch, new crops

def test_missing_and_corrupt_images_name_the_record(tmp_path):
    items = make_vg(tmp_path, n=3)
    (tmp_path/'images'/'1.png').write_bytes(b'not a png'); (tmp_path/'images'/'2.png').unlink()
    ds = VGDataset(items, tmp_path, image_res=16)
    with pytest.raises(DataError, match=r'vg.json\[1\].image: cannot read image'): ds[1]
    with pytest.raises(DataError, match=r'vg.json\[2\].image: image file not found'): ds[2]

def test_collate_with_hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = sorted(set('左边的红色方块一只猫问答：。？'))
    vocab = {'[PAD]': 0, '[UNK]': 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]')); tk.pre_tokenizer = pre_tokenizers.Split('', 'isolated')
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='[PAD]', unk_token='[UNK]')
    samples = [dict(image=torch.zeros(3, 4, 4), text='左边的红色方块', has_box=True, ref_id=1, options=['一只。', '猫。']),
               dict(image=torch.ones(3, 4, 4), text='一只猫', has_box=False, ref_id=2, options=['猫', '问答：？'])]
    b = Collate(tok, dict(text=5))(samples)
    assert b['image'].shape == (2, 3, 4, 4) and b['text_ids'].shape == (2, 5) and b['text_mask'][1].tolist() == [1, 1, 1, 0, 0]
    assert b['options_ids'].shape[:2] == (2, 2) and b['has_box'].tolist() == [True, False] and b['text'][1] == '一只猫'
    raw = Collate()(samples)
    assert 'text_ids' not in raw and raw['options'] == [s['options'] for s in samples]

# ---------------------------------------------------------------- issue 13: VD layouts, path maps, decoding, symlinks
def _png(path, size=(48, 48), seed=0):
    "A PNG of noise (so it does not compress to a few bytes)"
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path

def tiny_vd(n_opts=100, image='images/val/A/x.png'):
    "Object-form VD: two dialogs; the second's last round has an answer and `n_opts` options (the training shape)"
    return dict(dialogs=[dict(image_id=7, image=image, caption='一个红色的圆', dialog=[dict(question=0, answer=1), dict(question=1, answer=2)]),
                         dict(image_id=8, image=image, caption='两个蓝色的方块', dialog=[dict(question=2, answer=3),
                              dict(question=3, answer=5, answer_options=list(range(5, 5 + n_opts)))])],
                id2question={str(k): f'问题{k}？' for k in range(4)}, id2answer={str(k): f'答案{k}。' for k in range(120)})

@case
def vd_options(d):
    t99, dup, nogold = tiny_vd(99), tiny_vd(), tiny_vd()
    dup['dialogs'][1]['dialog'][1]['answer_options'][7] = 5
    nogold['dialogs'][1]['dialog'][1]['answer'] = 4
    gold = dict(data=[dict(image_id=3, image='images/a.png', caption='c', dialog_id=2, question=1, answer_options=list(range(99)), answer=3)])
    f = {n: wj(d/f'{n}.json', o) for n, o in dict(t99=t99, dup=dup, nogold=nogold, gold=gold, ok=tiny_vd()).items()}
    return ['validate', '--task', 'vd', *f.values()], f

def test_cli_vd_options_must_be_100_distinct_with_gold(cli):
    rc, out, f = cli['vd_options']
    assert rc == 1 and 'Traceback' not in out, out
    assert_lines(out, f['t99'], 't99.json[1].dialog[1].answer_options: 99 answer options, expected 100 (image_id 8)')
    assert_lines(out, f['dup'], 'dup.json[1].dialog[1].answer_options[7]: answer id 5 repeats dialog[1].answer_options[0] (image_id 8)')
    assert_lines(out, f['nogold'], 'nogold.json[1].dialog[1].answer: answer 4 is not among answer_options (image_id 8)')
    assert_lines(out, f['gold'], 'gold.json[0].answer_options: 99 answer options, expected 100 (image_id 3)')
    assert f"{f['ok']}: vd dialogs file, 2 records: clean" in out

@case
def truncated_png(d):
    for k in range(3): _png(d/'images'/f'{k}.png', seed=k)
    raw = (d/'images'/'2.png').read_bytes(); (d/'images'/'2.png').write_bytes(raw[:len(raw) // 2])
    raw = (d/'images'/'1.png').read_bytes(); (d/'images'/'1.png').write_bytes(raw[:-20])   # only the end (IEND) is cut
    recs = [dict(image='images/0.png', question_id=k, question='几个？', answer='2') for k in range(2)] + \
           [dict(image=f'images/{k}.png', question_id=10 + k, question='几个？', answer='2') for k in (1, 2)]
    f = dict(vqa=wj(d/'vqa.json', recs))
    return ['validate', '--task', 'vqa', f['vqa'], '--image-root', d], f

def test_cli_truncated_png_is_named(cli):
    rc, out, f = cli['truncated_png']
    assert rc == 1 and 'Traceback' not in out, out
    assert_lines(out, f['vqa'], 'vqa.json[2].image: cannot decode image', 'vqa.json[3].image: cannot decode image')
    assert re.search(r'vqa\.json\[3\]\.image: cannot decode image .*2\.png: .*[Tt]runcated', out), out
    assert 'vqa.json[0]' not in out and 'vqa.json[1].' not in out and '2 problems in 2 records' in out

def test_decode_error_names_truncation(tmp_path):
    p = _png(tmp_path/'a.png'); raw = p.read_bytes()
    assert decode_error(p) is None
    for cut in (len(raw) // 2, len(raw) - 20, 60):
        p.write_bytes(raw[:cut]); err = decode_error(p)
        assert err and err.startswith(f'cannot decode image {p}') and 'runcated' in err, (cut, err)
    p.write_bytes(b'\x89PNG not really'); assert 'cannot decode image' in decode_error(p)
    assert 'not found' in decode_error(tmp_path/'gone.png')

def _linked_root(d):
    "The guide's layout: $DATA/images is a symlink to the downloaded images; one file inside is a symlink too"
    dl = d/'download'/'images'
    for k in range(2): _png(dl/'A'/f'{k}.png', (30, 20), k)
    _png(d/'elsewhere'/'z.png', (30, 20), 9); (dl/'A'/'z.png').symlink_to(d/'elsewhere'/'z.png')
    (d/'data').mkdir(); (d/'data'/'images').symlink_to(dl, target_is_directory=True)
    return d/'data'

@case
def symlinked_images(d):
    root = _linked_root(d); imgs = [f'images/A/{n}.png' for n in ('0', '1', 'z')]
    vd = tiny_vd(image=imgs[0]); vd['dialogs'][1]['image'] = imgs[2]
    f = dict(itr=wj(d/'itr.json', [dict(image=p, caption=['一只猫'], image_id=k) for k, p in enumerate(imgs)]),
             vqa=wj(d/'vqa.json', [dict(image=p, question_id=k, question='几只？', answer='1') for k, p in enumerate(imgs)]),
             vg=wj(d/'vg.json', [dict(ref_id=k, image=p, text='左边', width=30, height=20, bbox=[1, 1, 5, 5]) for k, p in enumerate(imgs)]),
             vd=wj(d/'vd.json', vd), esc=wj(d/'esc.json', [dict(image='images/../../elsewhere/z.png', caption=['x'], image_id=1)]))
    return [['validate', '--task', t, f[t], '--image-root', root] for t in ('itr', 'vqa', 'vg', 'vd')] + \
           [['validate', '--task', 'itr', f['esc'], '--image-root', root]], f

def test_cli_symlinked_image_folder_is_followed(cli):
    runs, f = cli['symlinked_images']
    for (rc, out), t in zip(runs[:4], ('itr', 'vqa', 'vg', 'vd')):
        assert rc == 0 and out.strip().endswith(': clean') and 'escapes' not in out, out
    rc, out = runs[4]                                  # a textual `..` is still refused
    assert rc == 1 and "esc.json[0].image: image path 'images/../../elsewhere/z.png' escapes the image root ('..')" in out, out

def test_readers_and_datasets_follow_symlinks(tmp_path):
    root = _linked_root(tmp_path)
    recs = [dict(ref_id=k, image=f'images/A/{n}.png', text='左边', width=30, height=20, bbox=[1, 1, 5, 5]) for k, n in enumerate(('0', 'z'))]
    items = read_vg(wj(tmp_path/'vg.json', recs), image_root=root)
    ds = VGDataset(items, root, image_res=8)
    assert ds[1]['image'].shape == (3, 8, 8) and load_image(root/'images/A/z.png').size == (30, 20)

# ---------------------------------------------------------------- the organisers' VD training layout
@case
def vd_bare_list(d):
    org = write_vd_organiser_format(tiny_vd(), d/'o1', name='train')
    (d/'o2').mkdir(); (d/'o2'/'train.json').write_text(org.dialogs.read_text('utf-8'), 'utf-8')         # tables given by flag
    vis = write_vd_organiser_format(tiny_vd(), d/'o3', name='dialogs', tables_style='visdial')
    (vis.tables).rename(d/'o3'/'tables.json')                                                       # the second name looked for
    (d/'o4').mkdir(); (d/'o4'/'train.json').write_text(org.dialogs.read_text('utf-8'), 'utf-8')         # no tables anywhere
    f = dict(flag=d/'o2'/'train.json', beside=org.dialogs, tables_json=vis.dialogs, none=d/'o4'/'train.json')
    return [['validate', '--task', 'vd', f['beside'], f['tables_json']],
            ['validate', '--task', 'vd', f['flag'], '--vd-tables', org.tables],
            ['validate', '--task', 'vd', f['none']],
            ['validate', '--task', 'vd', org.tables]], f

def test_cli_vd_bare_list_with_tables(cli):
    runs, f = cli['vd_bare_list']
    (rc, out), (rc2, out2), (rc3, out3), (rc4, out4) = runs
    assert rc == 0 and out.count('vd dialogs file, 2 records: clean') == 2, out
    assert rc2 == 0 and 'vd dialogs file, 2 records: clean' in out2, out2
    assert rc3 == 1 and 'needs the question/answer tables: none given (tables= or --vd-tables FILE) and no train_tables.json or tables.json in' in out3, out3
    assert rc4 == 0 and 'vd question/answer tables file, 124 records: clean' in out4, out4

@real_case
def real_vd_bare(s):
    return ['validate', '--task', 'vd', s/'test_example/VD/test_VD.json', '--vd-tables', s/'test_example/VD/test_VD.json'], {}

@pytest.mark.sample('`validate --vd-tables` taking the tables of the real test_VD.json')
def test_cli_real_vd_tables_flag(sample, cli):
    rc, out, _ = cli['real_vd_bare']
    assert rc == 0 and out.strip().endswith('2 records: clean'), out

def test_vd_bare_list_reader(tmp_path):
    t = tiny_vd(); wj(tmp_path/'train.json', t['dialogs'])
    with pytest.raises(DataError, match=r'train\.json: a bare list of dialogs needs .*no train_tables\.json or tables\.json in'): read_vd(tmp_path/'train.json')
    lists = {'questions': [t['id2question'][str(k)] for k in range(4)], 'answers': [t['id2answer'][str(k)] for k in range(120)]}
    ints = {n: {int(k): v for k, v in t[n].items()} for n in ('id2question', 'id2answer')}
    for tables in (wj(tmp_path/'id2.json', {n: t[n] for n in ('id2question', 'id2answer')}),   # a file, str keys
                   ints,                                                                      # a parsed object, int keys
                   wj(tmp_path/'visdial.json', lists), wj(tmp_path/'visdial_v1.json', {'version': '1.0', 'data': lists})):
        v = read_vd(tmp_path/'train.json', tables=tables)
        assert v.id2question == {k: f'问题{k}？' for k in range(4)} and v.dialogs[1].rounds[1].answer_options == list(range(5, 105))
    t['dialogs'][1]['dialog'][0]['question'] = 9; wj(tmp_path/'train.json', t['dialogs'])
    wj(tmp_path/'train_tables.json', {'id2question': t['id2question'], 'id2answer': t['id2answer']})
    with pytest.raises(DataError) as e: read_vd(tmp_path/'train.json')
    assert str(e.value).startswith(f"{tmp_path/'train.json'}[1].dialog[0].question: question id 9 not in id2question (image_id 8; tables: {tmp_path/'train_tables.json'})")
    wj(tmp_path/'train_tables.json', {'id2question': {'0': 'q', 'zero': 'q'}, 'id2answer': t['id2answer']})
    with pytest.raises(DataError, match=r"train_tables\.json\.id2question\['zero'\]: id is not an integer"): read_vd(tmp_path/'train.json')

def test_vd_organiser_format_on_the_synthetic_world(tmp_path):
    "The dress-rehearsal fixture: synthetic VD val (options on its asked rounds) → the organisers' layout → same data"
    from cvlue_nb.synth import generate
    ds = tmp_path/'synth'; generate(ds, 0, 2, 3, 2, 32, progress=False)
    org = write_vd_organiser_format(ds/'VD'/'val.json', ds/'VD_org', name='train')
    assert org.path_map == 'pics/mosaiced-nocopy=images/val'
    raw = json.loads(org.dialogs.read_text('utf-8'))
    assert isinstance(raw, list) and raw[0]['image'].startswith('pics/mosaiced-nocopy/val_') and len(raw[0]['dialog']) == 10
    asked = [r for r in raw[0]['dialog'] if 'answer_options' in r]      # the synthetic VD asks only image-decided rounds
    assert asked and all(list(r) == ['answer', 'question', 'answer_options'] and len(r['answer_options']) == 100 for r in asked)
    assert all(list(r) == ['answer', 'question'] for r in raw[0]['dialog'] if 'answer_options' not in r)
    with pytest.raises(DataError, match=r'train\.json\[0\]\.image: image file not found: .*pics/mosaiced-nocopy/val_00000\.png'):
        read_vd(org.dialogs, image_root=ds)
    got, want = read_vd(org.dialogs, image_root=ds, path_map=[org.path_map]), read_vd(ds/'VD'/'val.json', image_root=ds)
    assert got.dialogs == want.dialogs and got.id2question == want.id2question and got.id2answer == want.id2answer
    assert validate('vd', org.dialogs, ds, path_map=org.path_map) == []
    assert len(VDDataset(got, ds, image_res=8)) == sum(r.answer_options is not None for d in want.dialogs for r in d.rounds)  # rounds to rank
    assert len(VDDataset(got, ds, image_res=8, train=True)) == 3 * 10                                                        # rounds to learn from

# ---------------------------------------------------------------- the image-path map, in every reader
def test_path_map_in_every_reader(tmp_path):
    for n in ('a', 'b'): _png(tmp_path/'images'/'train-valid'/'B'/f'{n}.png', (40, 30))
    pics = lambda n: f'pics/mosaiced-nocopy/B/{n}.png'
    pm, want = 'pics/mosaiced-nocopy/=images/train-valid/', lambda n: f'images/train-valid/B/{n}.png'
    itr = wj(tmp_path/'itr.json', [dict(image=pics('a'), caption=['x'], image_id=1)])
    gold = wj(tmp_path/'gold.json', [dict(image=pics('a'), caption=['x'])])
    imgs, caps = wj(tmp_path/'images.json', [pics('a'), pics('b')]), wj(tmp_path/'captions.json', ['x', 'y'])
    vqa = wj(tmp_path/'vqa.json', [dict(image=pics('b'), question_id=1, question='几个？', answer='2')])
    vg = wj(tmp_path/'vg.json', [dict(ref_id=1, image=pics('a'), text='左边', width=40, height=30, bbox=[1, 1, 5, 5])])
    vdg = wj(tmp_path/'vdg.json', dict(data=[dict(image_id=1, image=pics('b'), caption='c', dialog_id=1, question=0, answer_options=list(range(100)), answer=3)]))
    vd = wj(tmp_path/'vd.json', tiny_vd(image=pics('a')))
    for spec in (pm, [pm], {'pics/mosaiced-nocopy': 'images/train-valid'}, PathMap(pm)):
        kw = dict(image_root=tmp_path, path_map=spec)
        assert read_itr(itr, **kw)[0].image == want('a')
        g = read_itr_gold(gold, **kw)[0]; assert (g.image, g.image_id) == (want('a'), pics('a'))   # the id stays the file's
        t = read_itr_test(imgs, caps, **kw); assert (t.images, t.image_ids) == ([want('a'), want('b')], [pics('a'), pics('b')])
        assert read_vqa(vqa, **kw)[0].image == want('b') and read_vqa_gold(vqa, **kw)[0].image == want('b')
        assert read_vg(vg, **kw)[0].image == want('a') and read_vg_gold(vg, **kw)[0].image == want('a')
        assert read_vd(vd, **kw).dialogs[1].image == want('a') and read_vd_gold(vdg, **kw)[0].image == want('b')
        assert read_answer_list(wj(tmp_path/'al.json', {'是': 1}), path_map=spec) == {'是': 1}
    with pytest.raises(DataError, match=r"vg\.json\[0\]\.image: image file not found: .*pics/mosaiced-nocopy/B/a\.png"): read_vg(vg, tmp_path)
    assert read_itr_test(imgs, caps).image_ids == [pics('a'), pics('b')]      # no map: ids and paths agree
    assert PathMap(['pics=/abs/pics', 'pics/mosaiced-nocopy=images'])('pics/mosaiced-nocopy/x.png') == 'images/x.png'  # longest OLD wins
    assert PathMap('pics=/abs/pics')('pics2/x.png') == 'pics2/x.png'          # whole folders only
    with pytest.raises(CvlueError, match='is not OLD=NEW'): PathMap(['pics'])

@case
def path_map_cli(d):
    _png(d/'images'/'train-valid'/'B'/'a.png')
    vqa = wj(d/'vqa.json', [dict(image='pics/mosaiced-nocopy/B/a.png', question_id=1, question='几个？', answer='2')])
    return [['validate', '--task', 'vqa', vqa, '--image-root', d, '--path-map', 'pics/mosaiced-nocopy=images/train-valid', '--path-map', 'x=y'],
            ['validate', '--task', 'vqa', vqa, '--image-root', d],
            ['validate', '--task', 'vqa', vqa, '--path-map', 'no-equals-sign']], {'vqa': vqa}

def test_cli_path_map(cli):
    (rc, out), (rc2, out2), (rc3, out3) = cli['path_map_cli'][0]
    assert rc == 0 and out.strip().endswith('1 record: clean'), out
    assert rc2 == 1 and 'vqa.json[0].image: image file not found' in out2, out2
    assert rc3 == 2 and "path map rule 'no-equals-sign' is not OLD=NEW" in out3 and 'Traceback' not in out3, out3
