"""A malformed-input corpus for `python -m cvlue_nb.data validate`, made by systematic mutation of valid files.

`write_base` writes a small, valid data root for the four tasks in every file kind the project reads: ITR
train/val, test images + captions, gold; VQA train, test, gold, answer list; VG train, test, gold; VD training in
the object form `{dialogs, id2question, id2answer}` and in the organisers' bare list + tables file (images under
`pics/mosaiced-nocopy/…`, read through a path map), VD test and gold. Every base command must be clean (so the
checks below can fail). Each case in `CASES` then breaks one thing in a fresh copy of the root, runs the command
that validates that file (`main([...])`, in-process, with `--image-root`), and asserts that it exits 1 and that a
printed problem starts with `FILE[record].field: ` and says what is wrong. Gold files are validated together with
their test inputs, so a gold file that does not match them is a bad file too.

Cases that must *not* be rejected (deliberate choices: a UTF-8 BOM, captions other than five, …) are in `ACCEPTED`.

Run: OMP_NUM_THREADS=1 pytest -q tests/test_malformed.py   (about 5 s on an idle CPU; every case runs `main` in-process)
"""
import json, math
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from cvlue_nb.data import main, read_itr, read_itr_gold, read_itr_test, read_vqa, read_vg, read_vd, read_vd_gold, read_answer_list
from cvlue_nb.core import DataError

W, H = 48, 32                          # every image's size
MAP = 'pics/mosaiced-nocopy=images/train'

def png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)

def wj(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding='utf-8')

def opts(answer, k):
    "100 distinct answer ids that include `answer` (at a position that depends on k)"
    o = [a for a in range(120) if a != answer][:99]; o.insert(k % 100, answer); return o

def write_base(d:Path):
    "A valid data root under `d`"
    for k in range(4): png(d/'images'/'train'/f'{k}.png', k)
    for k in range(3): png(d/'images'/'test'/f'{k}.png', 10 + k)
    tr, te = [f'images/train/{k}.png' for k in range(4)], [f'images/test/{k}.png' for k in range(3)]
    caps = lambda k: [f'第{k}张图里有{n}只猫' for n in range(1, 6)]
    # ITR
    wj(d/'itr/train.json', [dict(image=tr[k], caption=caps(k), image_id=k) for k in range(3)])
    wj(d/'itr/test_images.json', te[:2])
    wj(d/'itr/test_captions.json', [c for k in (10, 11) for c in caps(k)])
    wj(d/'itr/test_gold.json', [dict(image=te[k], caption=caps(10 + k)) for k in range(2)])
    # VQA
    wj(d/'vqa/train.json', [dict(image=tr[k], question_id=k + 1, question=f'图{k}里有几只猫？', answer=str(k + 1)) for k in range(3)])
    wj(d/'vqa/answer_list.json', {'1': 0, '2': 1, '3': 2, '是': 3})
    gold = [dict(image=te[k], question_id=100 + k, question=f'图{k}里有猫吗？', answer='是') for k in range(3)]
    wj(d/'vqa/test.json', [dict(g, answer='') for g in gold]); wj(d/'vqa/test_gold.json', gold)
    # VG
    wj(d/'vg/train.json', [dict(ref_id=k + 1, image=tr[k], text=f'左边第{k}只猫', width=W, height=H, bbox=[2.5, 3, 20, 10 + k]) for k in range(3)])
    gold = [dict(ref_id=50 + k, image=te[k], text=f'右边第{k}只狗', width=W, height=H, bbox=[1, 1, 30.5, 20]) for k in range(3)]
    wj(d/'vg/test.json', [dict(g, bbox=[]) for g in gold]); wj(d/'vg/test_gold.json', gold)
    # VD: tables, training (object form and the organisers' bare list + tables), test, gold
    tables = dict(id2question={str(k): f'问题{k}？' for k in range(10)}, id2answer={str(k): f'答案{k}。' for k in range(120)})
    rnd = lambda q, a: dict(question=q, answer=a, answer_options=opts(a, q + a))
    dialogs = [dict(image_id=k, image=tr[k], caption=f'图{k}：几只猫', dialog=[rnd(q, 10 * k + q) for q in range(3)]) for k in range(2)]
    wj(d/'vd/train.json', dict(dialogs=dialogs, **tables))
    wj(d/'vd/org/train.json', [dict(dl, image=dl['image'].replace('images/train', 'pics/mosaiced-nocopy')) for dl in dialogs])
    wj(d/'vd/org/train_tables.json', tables)
    test = [dict(image_id=20 + k, image=te[k], caption=f'测试图{k}', dialog=[dict(question=q, answer=q + k) for q in range(2 + k)]
                 + [dict(question=5 + k, answer_options=opts(40 + k, k))]) for k in range(2)]
    wj(d/'vd/test.json', dict(dialogs=test, **tables))
    wj(d/'vd/test_gold.json', dict(data=[dict(image_id=t['image_id'], image=t['image'], caption=t['caption'], dialog_id=len(t['dialog']),
                                              question=t['dialog'][-1]['question'], answer_options=t['dialog'][-1]['answer_options'],
                                              answer=40 + k) for k, t in enumerate(test)]))

# the `validate` command of each group of files (`--image-root` is added)
GROUPS = dict(
    itr_train=['--task', 'itr', 'itr/train.json'],
    itr_test=['--task', 'itr', 'itr/test_images.json', 'itr/test_captions.json', 'itr/test_gold.json'],
    vqa_train=['--task', 'vqa', 'vqa/train.json', 'vqa/answer_list.json'],
    vqa_test=['--task', 'vqa', 'vqa/test.json', 'vqa/test_gold.json'],
    vg_train=['--task', 'vg', 'vg/train.json'],
    vg_test=['--task', 'vg', 'vg/test.json', 'vg/test_gold.json'],
    vd_train=['--task', 'vd', 'vd/train.json'],
    vd_org=['--task', 'vd', 'vd/org/train.json', '--path-map', MAP],
    vd_test=['--task', 'vd', 'vd/test.json', 'vd/test_gold.json'])

def argv(d, group):
    return ['validate', *[str(d/a) if a.endswith('.json') else a for a in GROUPS[group]], '--image-root', str(d)]

def run_validate_cli(d, group, capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: main(argv(d, group))
    return e.value.code, capsys.readouterr().out

# ---------------------------------------------------------------- mutations
def J(fn):
    "A mutation of a file's parsed JSON: `fn(data)` edits it in place"
    def m(path):
        data = json.loads(path.read_text('utf-8')); fn(data); wj(path, data)
    return m

def NEW(fn):
    "A mutation that replaces a file's parsed JSON by `fn(data)`"
    return lambda path: wj(path, fn(json.loads(path.read_text('utf-8'))))

def RAW(b):
    "Replace the file's bytes (`b` bytes, or a function of the old bytes)"
    return lambda path: path.write_bytes(b(path.read_bytes()) if callable(b) else b)

def _rec(data, i):
    "Record i of a parsed file: a list's item, or of the `dialogs` (VD) or `data` (VD gold) list"
    return (data.get('dialogs', data.get('data')) if isinstance(data, dict) else data)[i]

def SET(i, key, v): return J(lambda data: _rec(data, i).__setitem__(key, v))
def DEL(i, key): return J(lambda data: _rec(data, i).__delitem__(key))

def ROUND(i, j, key, v=..., fn=None):
    "Set (or delete, v=...) `key` of round j of dialog i; or apply `fn` to the round"
    def f(data):
        r = (data['dialogs'] if isinstance(data, dict) else data)[i]['dialog'][j]
        if fn: fn(r)
        elif v is ...: del r[key]
        else: r[key] = v
    return J(f)

def IMG(name, b):
    "Overwrite an image file under the data root; `b`: bytes, a function of the old bytes, or 'dir' (a folder instead)"
    def on_root(root):
        p = root/name
        if b == 'dir': p.unlink(missing_ok=True); p.mkdir(parents=True)
        else: p.write_bytes(b(p.read_bytes()) if callable(b) else b)
    on_root.root = True
    return on_root

# name → (group, file changed, mutation, where the problem is: `[record].field` after the file name ('' for the
#         whole file), words the message must contain)
CASES = {
    # ---- the file itself
    'invalid_json':          ('itr_train', 'itr/train.json', RAW(b'[{"image": "images/train/0.png",, "image_id": 1}]'), '', 'malformed JSON'),
    'truncated_json':        ('vqa_test', 'vqa/test.json', RAW(lambda b: b[:len(b) // 2]), '', 'truncated JSON'),
    'empty_file':            ('vg_train', 'vg/train.json', RAW(b''), '', 'file is empty'),
    'whitespace_file':       ('vd_test', 'vd/test_gold.json', RAW(b' \n\t\n'), '', 'file is empty'),
    'utf16_bom':             ('vqa_train', 'vqa/train.json', RAW(lambda b: b.decode('utf-8').encode('utf-16')), '', 'not UTF-8'),
    'gbk_bytes':             ('itr_test', 'itr/test_captions.json', RAW(lambda b: b.decode('utf-8').encode('gbk')), '', 'not UTF-8'),
    'latin1_byte':           ('vg_test', 'vg/test.json', RAW(lambda b: b.replace('右边'.encode(), b'\xe9', 1)), '', 'not UTF-8'),
    'json_lines':            ('vqa_train', 'vqa/answer_list.json', RAW(b'{"1": 0}\n{"2": 1}\n'), '', 'malformed JSON'),
    'trailing_garbage':      ('vd_train', 'vd/train.json', RAW(lambda b: b + b'\n]'), '', 'malformed JSON'),
    'tables_truncated':      ('vd_org', 'vd/org/train_tables.json', RAW(lambda b: b[:200]), '', 'cannot read the VD tables'),
    'duplicate_json_key':    ('vg_train', 'vg/train.json', RAW(lambda b: b.replace(b'"image": "images/train/1.png"', b'"image": "images/train/1.png", "image": "images/train/3.png"', 1)), '[1].image', 'duplicate key'),
    # ---- wrong top-level type, empty
    'itr_train_object':      ('itr_train', 'itr/train.json', NEW(lambda d: d[0]), '', 'expected a JSON list'),
    'vqa_train_string':      ('vqa_train', 'vqa/train.json', NEW(lambda d: 'vqa'), '', 'expected a JSON list'),
    'vg_test_null':          ('vg_test', 'vg/test.json', RAW(b'null'), '', 'expected a JSON list'),
    'vd_test_number':        ('vd_test', 'vd/test.json', RAW(b'3'), '', 'expected a JSON object with dialogs'),
    'vd_gold_bare_list':     ('vd_test', 'vd/test_gold.json', NEW(lambda d: d['data']), '', 'gold'),
    'itr_images_object':     ('itr_test', 'itr/test_images.json', NEW(lambda d: {'images': d}), '', 'expected a JSON list'),
    'answer_list_is_list':   ('vqa_train', 'vqa/answer_list.json', NEW(lambda d: list(d)), '', 'expected a JSON object answer → id'),
    'answer_list_ints':      ('vqa_train', 'vqa/answer_list.json', NEW(lambda d: [0, 1]), '', 'expected a JSON object answer → id'),
    'answer_list_empty':     ('vqa_train', 'vqa/answer_list.json', NEW(lambda d: {}), '', 'no answers'),
    'itr_train_empty_list':  ('itr_train', 'itr/train.json', NEW(lambda d: []), '', 'no records'),
    'vqa_test_empty_list':   ('vqa_test', 'vqa/test.json', NEW(lambda d: []), '', 'no'),
    'vg_train_empty_list':   ('vg_train', 'vg/train.json', NEW(lambda d: []), '', 'no'),
    'itr_captions_empty':    ('itr_test', 'itr/test_captions.json', NEW(lambda d: []), '', 'no captions'),
    'vd_no_dialogs':         ('vd_train', 'vd/train.json', J(lambda d: d.update(dialogs=[])), '.dialogs', 'no dialogs'),
    'vd_bare_list_empty':    ('vd_org', 'vd/org/train.json', NEW(lambda d: []), '', 'no dialogs'),
    'vd_gold_empty':         ('vd_test', 'vd/test_gold.json', J(lambda d: d.update(data=[])), '.data', 'no gold records'),
    'vd_tables_empty':       ('vd_org', 'vd/org/train_tables.json', J(lambda d: d.update(id2question={})), '.id2question', 'empty'),
    'record_not_object':     ('vqa_train', 'vqa/train.json', J(lambda d: d.__setitem__(1, 'q')), '[1]', 'record is a string, not an object'),
    # ---- missing fields
    **{f'itr_train_missing_{k}': ('itr_train', 'itr/train.json', DEL(1, k), f'[1].{k}', 'missing key') for k in ('image', 'caption', 'image_id')},
    'itr_train_no_image_id_anywhere': ('itr_train', 'itr/train.json', NEW(lambda d: [dict(image=r['image'], caption=r['caption']) for r in d]), '[0].image_id', 'missing key'),
    **{f'itr_gold_missing_{k}': ('itr_test', 'itr/test_gold.json', DEL(1, k), f'[1].{k}', 'missing key') for k in ('image', 'caption')},
    **{f'vqa_train_missing_{k}': ('vqa_train', 'vqa/train.json', DEL(2, k), f'[2].{k}', 'missing key') for k in ('image', 'question_id', 'question', 'answer')},
    'vqa_test_missing_answer': ('vqa_test', 'vqa/test.json', DEL(0, 'answer'), '[0].answer', 'missing key'),
    **{f'vg_train_missing_{k}': ('vg_train', 'vg/train.json', DEL(1, k), f'[1].{k}', 'missing key') for k in ('ref_id', 'image', 'text', 'width', 'height', 'bbox')},
    'vg_test_missing_bbox':  ('vg_test', 'vg/test.json', DEL(2, 'bbox'), '[2].bbox', 'missing key'),
    **{f'vd_missing_{k}': ('vd_train', 'vd/train.json', DEL(1, k), f'[1].{k}', 'missing key') for k in ('image_id', 'image', 'caption', 'dialog')},
    'vd_missing_id2answer':  ('vd_test', 'vd/test.json', J(lambda d: d.pop('id2answer')), '.id2answer', 'missing key'),
    'vd_missing_dialogs':    ('vd_test', 'vd/test.json', J(lambda d: d.pop('dialogs')), '.dialogs', 'missing key'),
    'vd_round_missing_question': ('vd_org', 'vd/org/train.json', ROUND(0, 1, 'question'), '[0].dialog[1].question', 'missing key'),
    'vd_round_missing_answer':   ('vd_train', 'vd/train.json', ROUND(1, 0, 'answer'), '[1].dialog[0].answer', 'missing key'),
    'vd_test_last_round_bare':   ('vd_test', 'vd/test.json', ROUND(1, -1, 'answer_options'), '[1].dialog[3].answer_options', 'missing key'),
    **{f'vd_gold_missing_{k}': ('vd_test', 'vd/test_gold.json', DEL(0, k), f'[0].{k}', 'missing key')
       for k in ('image_id', 'image', 'caption', 'dialog_id', 'question', 'answer_options', 'answer')},
    # ---- wrong types
    'itr_image_int':         ('itr_train', 'itr/train.json', SET(0, 'image', 3), '[0].image', 'wrong type'),
    'itr_caption_str':       ('itr_train', 'itr/train.json', SET(1, 'caption', '一只猫'), '[1].caption', 'wrong type: expected a list'),
    'itr_image_id_float':    ('itr_train', 'itr/train.json', SET(2, 'image_id', 2.5), '[2].image_id', 'wrong type'),
    'itr_image_id_null':     ('itr_train', 'itr/train.json', SET(2, 'image_id', None), '[2].image_id', 'wrong type'),
    'itr_image_id_bool':     ('itr_train', 'itr/train.json', SET(2, 'image_id', True), '[2].image_id', 'wrong type'),
    'itr_caption_int':       ('itr_train', 'itr/train.json', SET(0, 'caption', ['一只猫', 5]), '[0].caption[1]', 'wrong type'),
    'itr_caption_null':      ('itr_test', 'itr/test_gold.json', SET(0, 'caption', [None] * 5), '[0].caption[0]', 'wrong type'),
    'itr_caption_nested':    ('itr_train', 'itr/train.json', SET(0, 'caption', [['一只猫']]), '[0].caption[0]', 'wrong type'),
    'itr_captions_nonstring': ('itr_test', 'itr/test_captions.json', J(lambda d: d.__setitem__(3, 42)), '[3]', 'wrong type'),
    'itr_images_null':       ('itr_test', 'itr/test_images.json', NEW(lambda d: d + [None]), '[2]', 'wrong type'),
    'vqa_qid_str':           ('vqa_train', 'vqa/train.json', SET(0, 'question_id', '1'), '[0].question_id', 'wrong type: expected an integer'),
    'vqa_qid_bool':          ('vqa_test', 'vqa/test.json', SET(1, 'question_id', False), '[1].question_id', 'wrong type'),
    'vqa_qid_float':         ('vqa_train', 'vqa/train.json', SET(0, 'question_id', 1.0), '[0].question_id', 'wrong type'),
    'vqa_question_list':     ('vqa_train', 'vqa/train.json', SET(1, 'question', ['几只？']), '[1].question', 'wrong type'),
    'vqa_answer_int':        ('vqa_train', 'vqa/train.json', SET(1, 'answer', 2), '[1].answer', 'wrong type'),
    'vqa_test_answer_null':  ('vqa_test', 'vqa/test.json', SET(1, 'answer', None), '[1].answer', 'wrong type'),
    'vqa_gold_answer_null':  ('vqa_test', 'vqa/test_gold.json', SET(1, 'answer', None), '[1].answer', 'wrong type'),
    'answer_list_value_str': ('vqa_train', 'vqa/answer_list.json', J(lambda d: d.update({'是': '3'})), "[3].'是'", 'wrong type'),
    'answer_list_value_bool': ('vqa_train', 'vqa/answer_list.json', J(lambda d: d.update({'是': True})), "[3].'是'", 'wrong type'),
    'vg_ref_id_str':         ('vg_train', 'vg/train.json', SET(0, 'ref_id', '1'), '[0].ref_id', 'wrong type'),
    'vg_text_null':          ('vg_test', 'vg/test.json', SET(0, 'text', None), '[0].text', 'wrong type'),
    'vg_width_str':          ('vg_train', 'vg/train.json', SET(0, 'width', '48'), '[0].width', 'wrong type'),
    'vg_height_float':       ('vg_test', 'vg/test.json', SET(0, 'height', 32.5), '[0].height', 'wrong type'),
    'vg_width_bool':         ('vg_train', 'vg/train.json', SET(2, 'width', True), '[2].width', 'wrong type'),
    'vg_bbox_str':           ('vg_train', 'vg/train.json', SET(0, 'bbox', '[1, 1, 5, 5]'), '[0].bbox', 'wrong type'),
    'vg_bbox_null':          ('vg_train', 'vg/train.json', SET(0, 'bbox', None), '[0].bbox', 'wrong type'),
    'vg_bbox_dict':          ('vg_test', 'vg/test_gold.json', SET(0, 'bbox', dict(x=1, y=1, w=5, h=5)), '[0].bbox', 'wrong type'),
    'vg_bbox_bool':          ('vg_train', 'vg/train.json', SET(1, 'bbox', [1, True, 5, 5]), '[1].bbox[1]', 'wrong type'),
    'vg_bbox_str_number':    ('vg_train', 'vg/train.json', SET(1, 'bbox', [1, 1, '5', 5]), '[1].bbox[2]', 'wrong type'),
    'vg_bbox_nested':        ('vg_train', 'vg/train.json', SET(1, 'bbox', [[1, 1, 5, 5]]), '[1].bbox[0]', 'wrong type'),
    'vd_question_str':       ('vd_train', 'vd/train.json', ROUND(0, 0, 'question', '0'), '[0].dialog[0].question', 'wrong type'),
    'vd_answer_null':        ('vd_org', 'vd/org/train.json', ROUND(1, 1, 'answer', None), '[1].dialog[1].answer', 'wrong type'),
    'vd_options_str':        ('vd_test', 'vd/test.json', ROUND(0, -1, 'answer_options', '0,1,2'), '[0].dialog[2].answer_options', 'wrong type'),
    'vd_option_str':         ('vd_train', 'vd/train.json', ROUND(0, 0, None, fn=lambda r: r['answer_options'].__setitem__(50, '7')), '[0].dialog[0].answer_options[50]', 'wrong type'),
    'vd_dialog_object':      ('vd_train', 'vd/train.json', SET(0, 'dialog', {'0': {'question': 0, 'answer': 0}}), '[0].dialog', 'wrong type'),
    'vd_round_not_object':   ('vd_test', 'vd/test.json', J(lambda d: d['dialogs'][0]['dialog'].__setitem__(0, [0, 0])), '[0].dialog[0]', 'not an object'),
    'vd_caption_int':        ('vd_test', 'vd/test.json', SET(1, 'caption', 5), '[1].caption', 'wrong type'),
    'vd_image_id_null':      ('vd_org', 'vd/org/train.json', SET(1, 'image_id', None), '[1].image_id', 'wrong type'),
    'vd_gold_dialog_id_str': ('vd_test', 'vd/test_gold.json', SET(0, 'dialog_id', '3'), '[0].dialog_id', 'wrong type'),
    'vd_gold_answer_str':    ('vd_test', 'vd/test_gold.json', SET(1, 'answer', '41'), '[1].answer', 'wrong type'),
    'vd_table_value_int':    ('vd_org', 'vd/org/train_tables.json', J(lambda d: d['id2answer'].update({'5': 5})), ".id2answer['5']", 'wrong type'),
    'vd_table_not_object':   ('vd_test', 'vd/test.json', J(lambda d: d.update(id2question='问题')), '.id2question', 'wrong type'),
    'vd_table_key_not_int':  ('vd_train', 'vd/train.json', J(lambda d: d['id2question'].update({'q1': '问题？'})), ".id2question['q1']", 'not an integer'),
    # ---- bad values
    'itr_caption_blank':     ('itr_train', 'itr/train.json', J(lambda d: d[1]['caption'].__setitem__(2, ' \u3000 ')), '[1].caption[2]', 'empty text'),
    'itr_captions_none':     ('itr_train', 'itr/train.json', SET(0, 'caption', []), '[0].caption', 'no captions'),
    'itr_gold_no_captions':  ('itr_test', 'itr/test_gold.json', SET(1, 'caption', []), '[1].caption', 'no captions'),
    'itr_test_caption_blank': ('itr_test', 'itr/test_captions.json', J(lambda d: d.__setitem__(0, '')), '[0]', 'empty text'),
    'vqa_question_blank':    ('vqa_train', 'vqa/train.json', SET(0, 'question', '   '), '[0].question', 'empty text'),
    'vqa_answer_blank':      ('vqa_train', 'vqa/train.json', SET(0, 'answer', ''), '[0].answer', 'empty text'),
    'vqa_gold_answer_blank': ('vqa_test', 'vqa/test_gold.json', SET(2, 'answer', ' '), '[2].answer', 'empty text'),
    'answer_list_blank_key': ('vqa_train', 'vqa/answer_list.json', J(lambda d: d.update({' ': 9})), "[4].' '", 'empty text'),
    'vg_text_blank':         ('vg_train', 'vg/train.json', SET(2, 'text', ''), '[2].text', 'empty text'),
    'vd_caption_blank':      ('vd_train', 'vd/train.json', SET(0, 'caption', ' '), '[0].caption', 'empty text'),
    'vd_table_text_blank':   ('vd_test', 'vd/test.json', J(lambda d: d['id2answer'].update({'41': ''})), ".id2answer['41']", 'empty text'),
    'vg_width_zero':         ('vg_train', 'vg/train.json', SET(0, 'width', 0), '[0].width', 'must be positive'),
    'vg_height_negative':    ('vg_test', 'vg/test.json', SET(1, 'height', -32), '[1].height', 'must be positive'),
    'vg_bbox_nan':           ('vg_train', 'vg/train.json', SET(0, 'bbox', [1, math.nan, 5, 5]), '[0].bbox[1]', 'not a finite number'),
    'vg_bbox_inf':           ('vg_test', 'vg/test_gold.json', SET(0, 'bbox', [1, 1, math.inf, 5]), '[0].bbox[2]', 'not a finite number'),
    'vg_bbox_neg_inf':       ('vg_train', 'vg/train.json', SET(0, 'bbox', [-math.inf, 1, 5, 5]), '[0].bbox[0]', 'not a finite number'),
    'vg_bbox_negative_x':    ('vg_train', 'vg/train.json', SET(0, 'bbox', [-5, 1, 5, 5]), '[0].bbox', 'outside'),
    'vg_bbox_negative_w':    ('vg_train', 'vg/train.json', SET(0, 'bbox', [10, 1, -5, 5]), '[0].bbox', 'w <= 0'),
    'vg_bbox_zero_h':        ('vg_test', 'vg/test_gold.json', SET(1, 'bbox', [10, 1, 5, 0]), '[1].bbox', 'h <= 0'),
    'vg_bbox_out_right':     ('vg_train', 'vg/train.json', SET(2, 'bbox', [40, 1, 20, 5]), '[2].bbox', 'outside the 48x32 image'),
    'vg_bbox_out_bottom':    ('vg_test', 'vg/test_gold.json', SET(2, 'bbox', [1, 30, 5, 20]), '[2].bbox', 'outside'),
    'vg_bbox_xyxy_far':      ('vg_train', 'vg/train.json', SET(1, 'bbox', [100, 50, 140, 90]), '[1].bbox', 'outside'),
    'vg_bbox_3':             ('vg_train', 'vg/train.json', SET(1, 'bbox', [1, 1, 5]), '[1].bbox', 'box has 3 numbers'),
    'vg_bbox_5':             ('vg_test', 'vg/test_gold.json', SET(1, 'bbox', [1, 1, 5, 5, 1]), '[1].bbox', 'box has 5 numbers'),
    'vg_train_bbox_empty':   ('vg_train', 'vg/train.json', SET(1, 'bbox', []), '[1].bbox', 'box has 0 numbers'),
    'vg_gold_bbox_empty':    ('vg_test', 'vg/test_gold.json', SET(0, 'bbox', []), '[0].bbox', 'box has 0 numbers'),
    'vg_size_mismatch':      ('vg_train', 'vg/train.json', SET(0, 'width', 64), '[0].width', 'image is 48x32'),
    # ---- duplicates
    'vqa_dup_question_id':   ('vqa_train', 'vqa/train.json', SET(2, 'question_id', 1), '[2].question_id', 'duplicate question_id 1'),
    'vqa_test_dup_qid':      ('vqa_test', 'vqa/test.json', SET(2, 'question_id', 100), '[2].question_id', 'duplicate question_id'),
    'vg_dup_ref_id':         ('vg_test', 'vg/test.json', SET(1, 'ref_id', 50), '[1].ref_id', 'duplicate ref_id 50'),
    'itr_dup_image_id':      ('itr_train', 'itr/train.json', SET(2, 'image_id', 0), '[2].image_id', 'duplicate image_id 0'),
    'itr_gold_dup_image':    ('itr_test', 'itr/test_gold.json', SET(1, 'image', 'images/test/0.png'), '[1].image', 'duplicate image'),
    'itr_images_dup':        ('itr_test', 'itr/test_images.json', NEW(lambda d: [d[0], d[1], d[0]]), '[2]', 'duplicate image'),
    'itr_captions_dup':      ('itr_test', 'itr/test_captions.json', NEW(lambda d: d + [d[0]]), '[10]', 'duplicate caption'),
    'vd_dup_image_id':       ('vd_org', 'vd/org/train.json', SET(1, 'image_id', 0), '[1].image_id', 'duplicate image_id 0'),
    'vd_gold_dup_round':     ('vd_test', 'vd/test_gold.json', J(lambda d: d['data'].append(dict(d['data'][0]))), '[2].(image_id, dialog_id)', 'duplicate'),
    'answer_list_dup_id':    ('vqa_train', 'vqa/answer_list.json', J(lambda d: d.update({'是': 0})), "[3].'是'", 'duplicate answer id 0'),
    # ---- image paths and image files
    'path_absolute':         ('vqa_train', 'vqa/train.json', SET(0, 'image', '/etc/passwd'), '[0].image', 'absolute image path'),
    'path_windows':          ('vg_train', 'vg/train.json', SET(0, 'image', 'C:\\images\\0.png'), '[0].image', 'absolute image path'),
    'path_dotdot':           ('itr_train', 'itr/train.json', SET(1, 'image', '../images/train/1.png'), '[1].image', 'escapes the image root'),
    'path_inner_dotdot':     ('vd_test', 'vd/test.json', SET(0, 'image', 'images/../../x/0.png'), '[0].image', 'escapes the image root'),
    'path_images_list_abs':  ('itr_test', 'itr/test_images.json', J(lambda d: d.__setitem__(1, '/data/images/test/1.png')), '[1]', 'absolute image path'),
    'path_blank':            ('vqa_test', 'vqa/test.json', SET(0, 'image', ''), '[0].image', 'empty text'),
    'image_missing':         ('vqa_test', 'vqa/test.json', SET(1, 'image', 'images/test/9.png'), '[1].image', 'image file not found'),
    'image_missing_bare_list': ('vd_org', 'vd/org/train.json', SET(0, 'image', 'pics/mosaiced-nocopy/7.png'), '[0].image', 'image file not found'),
    'image_not_an_image':    ('itr_train', 'images/train/2.png', IMG('images/train/2.png', b'{"not": "an image"}'), None, None),
    'image_truncated':       ('vqa_train', 'images/train/1.png', IMG('images/train/1.png', lambda b: b[:len(b) // 2]), None, None),
    'image_zero_bytes':      ('vg_test', 'images/test/2.png', IMG('images/test/2.png', b''), None, None),
    'image_is_folder':       ('itr_test', 'images/test/1.png', IMG('images/test/1.png', 'dir'), None, None),
    'image_no_extension_in_list': ('itr_test', 'itr/test_images.json', J(lambda d: d.__setitem__(1, 'images/test/1')), '[1]', 'image file not found'),
    # ---- VD rounds and tables
    'vd_answer_not_in_table':   ('vd_train', 'vd/train.json', ROUND(0, 1, None, fn=lambda r: (r.update(answer=500), r['answer_options'].__setitem__(0, 500))),
                                 '[0].dialog[1].answer', 'answer id 500 not in id2answer'),
    'vd_question_not_in_table': ('vd_test', 'vd/test.json', ROUND(1, 0, 'question', 77), '[1].dialog[0].question', 'question id 77 not in id2question'),
    'vd_answer_not_in_options': ('vd_org', 'vd/org/train.json', ROUND(1, 2, None, fn=lambda r: r['answer_options'].remove(r['answer']) or r['answer_options'].append(119)),
                                 '[1].dialog[2].answer', 'is not among answer_options'),
    'vd_options_99':            ('vd_test', 'vd/test.json', ROUND(0, -1, None, fn=lambda r: r['answer_options'].pop(0)), '[0].dialog[2].answer_options', '99 answer options'),
    'vd_options_101':           ('vd_train', 'vd/train.json', ROUND(1, 0, None, fn=lambda r: r['answer_options'].append(119)),
                                 '[1].dialog[0].answer_options', '101 answer options'),
    'vd_options_duplicate':     ('vd_org', 'vd/org/train.json', ROUND(0, 0, None, fn=lambda r: r['answer_options'].__setitem__(99, r['answer_options'][98])),
                                 '[0].dialog[0].answer_options[99]', 'repeats'),
    'vd_option_not_in_table':   ('vd_test', 'vd/test.json', ROUND(1, -1, None, fn=lambda r: r['answer_options'].__setitem__(7, 1000)), '[1].dialog[3].answer_options[7]', 'not in id2answer'),
    'vd_options_empty':         ('vd_test', 'vd/test.json', ROUND(1, -1, 'answer_options', []), '[1].dialog[3].answer_options', 'no answer options'),
    'vd_zero_rounds':           ('vd_test', 'vd/test.json', SET(0, 'dialog', []), '[0].dialog', 'no rounds'),
    'vd_tables_missing_id':     ('vd_org', 'vd/org/train_tables.json', J(lambda d: d['id2answer'].pop('11')), ('vd/org/train.json', '[1].dialog[1].answer'), 'answer id 11 not in id2answer'),
    'vd_tables_missing_qid':    ('vd_test', 'vd/test.json', J(lambda d: d['id2question'].pop('6')), '[1].dialog[3].question', 'question id 6 not in id2question'),
    'vd_gold_dialog_id_zero':   ('vd_test', 'vd/test_gold.json', SET(0, 'dialog_id', 0), '[0].dialog_id', 'must be >= 1'),
    'vd_gold_answer_not_in_options': ('vd_test', 'vd/test_gold.json', SET(1, 'answer', 119), '[1].answer', 'not among answer_options'),
    'vqa_gold_all_answers_blank': ('vqa_test', 'vqa/test_gold.json', NEW(lambda d: [dict(r, answer='') for r in d]), '[0].answer', 'empty text'),
    'vg_gold_all_boxes_empty': ('vg_test', 'vg/test_gold.json', NEW(lambda d: [dict(r, bbox=[]) for r in d]), '[0].bbox', 'box has 0 numbers'),
    'vd_gold_options_99':       ('vd_test', 'vd/test_gold.json', J(lambda d: d['data'][0]['answer_options'].remove(0)), '[0].answer_options', '99 answer options'),
    # ---- gold files that do not match their test inputs
    'vqa_gold_shorter':      ('vqa_test', 'vqa/test_gold.json', NEW(lambda d: d[:2]), '', '2 records but'),
    'vqa_gold_order':        ('vqa_test', 'vqa/test_gold.json', NEW(lambda d: [d[1], d[0], d[2]]), '[0].question_id', 'does not match'),
    'vqa_gold_unknown_id':   ('vqa_test', 'vqa/test_gold.json', SET(2, 'question_id', 999), '[2].question_id', 'does not match'),
    'vqa_gold_other_image':  ('vqa_test', 'vqa/test_gold.json', SET(1, 'image', 'images/test/0.png'), '[1].image', 'does not match'),
    'vg_gold_longer':        ('vg_test', 'vg/test_gold.json', NEW(lambda d: d + [dict(d[0], ref_id=99)]), '', '4 records but'),
    'vg_gold_order':         ('vg_test', 'vg/test_gold.json', NEW(lambda d: [d[0], d[2], d[1]]), '[1].ref_id', 'does not match'),
    'vg_gold_other_size':    ('vg_test', 'vg/test_gold.json', SET(0, 'width', 40), '[0].width', ''),
    'vg_gold_other_text':    ('vg_test', 'vg/test_gold.json', SET(1, 'text', '另一只狗'), '[1].text', 'does not match'),
    'itr_gold_unknown_image': ('itr_test', 'itr/test_gold.json', SET(1, 'image', 'images/test/2.png'), '[1].image', 'not in'),
    'itr_gold_missing_image': ('itr_test', 'itr/test_gold.json', NEW(lambda d: d[:1]), '', 'no gold record'),
    'itr_gold_unknown_caption': ('itr_test', 'itr/test_gold.json', J(lambda d: d[0]['caption'].__setitem__(0, '一只没有出现过的狗')), '[0].caption[0]', 'not in'),
    'itr_captions_without_gold': ('itr_test', 'itr/test_captions.json', NEW(lambda d: d + ['一句多出来的描述']), ('itr/test_gold.json', ''), 'not a caption of any gold image'),
    'vd_gold_shorter':       ('vd_test', 'vd/test_gold.json', J(lambda d: d.update(data=d['data'][:1])), '', '1 record but'),
    'vd_gold_order':         ('vd_test', 'vd/test_gold.json', J(lambda d: d.update(data=d['data'][::-1])), '[0].image_id', 'does not match'),
    'vd_gold_wrong_dialog_id': ('vd_test', 'vd/test_gold.json', SET(1, 'dialog_id', 3), '[1].dialog_id', 'does not match'),
    'vd_gold_wrong_question': ('vd_test', 'vd/test_gold.json', SET(0, 'question', 1), '[0].question', 'does not match'),
    'vd_gold_other_options': ('vd_test', 'vd/test_gold.json', J(lambda d: d['data'][0]['answer_options'].reverse()), '[0].answer_options', 'does not match'),
}

# image mutations: the problem is reported on every record that names the image (here: the first one)
IMAGE_WHERE = {'image_not_an_image': ('itr/train.json', '[2].image', 'cannot decode image'),
               'image_truncated': ('vqa/train.json', '[1].image', 'cannot decode image'),
               'image_zero_bytes': ('vg/test.json', '[2].image', 'cannot'),
               'image_is_folder': ('itr/test_images.json', '[1]', 'image file not found')}

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp('base'); write_base(d); return d

def fresh(base, tmp_path):
    import shutil
    d = tmp_path/'data'; shutil.copytree(base, d); return d

@pytest.mark.parametrize('group', list(GROUPS))
def test_base_files_are_clean(base, group, capsys):
    "Every base command passes: the corpus below starts from good files"
    rc, out = run_validate_cli(base, group, capsys)
    assert rc == 0 and out.count(': clean') == sum(a.endswith('.json') for a in GROUPS[group]), out

def test_corpus_size():
    assert len(CASES) >= 40 and {g for g, *_ in CASES.values()} == set(GROUPS)

@pytest.mark.parametrize('name', list(CASES))
def test_malformed_file_is_rejected(base, tmp_path, name, capsys):
    group, rel, mut, where, words = CASES[name]
    d = fresh(base, tmp_path)
    if getattr(mut, 'root', False): mut(d)
    else: mut(d/rel)
    if where is None: rel, where, words = IMAGE_WHERE[name]
    if isinstance(where, tuple): rel, where = where
    rc, out = run_validate_cli(d, group, capsys)
    assert rc == 1 and 'Traceback' not in out, out
    prefix = f'{d/rel}{where}: '
    lines = [l for l in out.splitlines() if l.startswith(prefix)]
    assert lines, f'no problem reported at {prefix!r}:\n{out}'
    assert any(words in l for l in lines), f'{words!r} not in the problems at {prefix!r}:\n{out}'

# Deliberately accepted: not malformed for this project (each is read correctly by every command)
ACCEPTED = {
    'utf8_bom':              ('vqa_train', 'vqa/train.json', RAW(lambda b: b'\xef\xbb\xbf' + b)),  # read as UTF-8 (Windows editors write it)
    'itr_four_captions':     ('itr_train', 'itr/train.json', J(lambda d: d[0]['caption'].pop())),  # CVLUE has 5; any number >= 1 trains
    'vd_rounds_without_options': ('vd_train', 'vd/train.json', J(lambda d: [r.pop('answer_options') for dl in d['dialogs'] for r in dl['dialog']])),
    'vg_box_within_slack':   ('vg_train', 'vg/train.json', SET(0, 'bbox', [-0.5, 0, W + 0.4, H])),  # annotation rounding (BOX_SLACK)
    'vd_history_skips_ids':  ('vd_test', 'vd/test.json', ROUND(1, 1, 'question', 9)),              # real test rounds skip question ids
    'unused_table_entries':  ('vd_org', 'vd/org/train_tables.json', J(lambda d: d['id2question'].update({'500': '多余的问题？'}))),
    'extra_field':           ('vg_test', 'vg/test.json', SET(0, 'source', 'v2')),                     # fields we do not use are left alone
    'string_image_id':       ('itr_train', 'itr/train.json', SET(1, 'image_id', 'B-1-250')),          # ids may be strings (an `id` field)
}

@pytest.mark.parametrize('name', list(ACCEPTED))
def test_deliberately_accepted(base, tmp_path, name, capsys):
    group, rel, mut = ACCEPTED[name]
    d = fresh(base, tmp_path); mut(d/rel)
    rc, out = run_validate_cli(d, group, capsys)
    assert rc == 0, out

# ---------------------------------------------------------------- the readers and the jobs' preflight refuse the same files
READERS = {   # case → (reader call on the data root, where the error is: file and `[record].field` after it)
    'duplicate_json_key':    (lambda d: read_vg(d/'vg/train.json'), 'vg/train.json', '[1].image'),
    'itr_train_empty_list':  (lambda d: read_itr(d/'itr/train.json'), 'itr/train.json', ''),
    'itr_train_no_image_id_anywhere': (lambda d: read_itr(d/'itr/train.json'), 'itr/train.json', '[0].image_id'),
    'itr_captions_empty':    (lambda d: read_itr_test(d/'itr/test_images.json', d/'itr/test_captions.json'), 'itr/test_captions.json', ''),
    'vqa_test_empty_list':   (lambda d: read_vqa(d/'vqa/test.json', skip_bad=True), 'vqa/test.json', ''),
    'answer_list_empty':     (lambda d: read_answer_list(d/'vqa/answer_list.json'), 'vqa/answer_list.json', ''),
    'vqa_gold_all_answers_blank': (lambda d: read_vqa(d/'vqa/test_gold.json', test=False), 'vqa/test_gold.json', '[0].answer'),
    'vg_gold_all_boxes_empty': (lambda d: read_vg(d/'vg/test_gold.json', test=False), 'vg/test_gold.json', '[0].bbox'),
    'vd_no_dialogs':         (lambda d: read_vd(d/'vd/train.json'), 'vd/train.json', '.dialogs'),
    'vd_missing_dialogs':    (lambda d: read_vd(d/'vd/test.json'), 'vd/test.json', '.dialogs'),
    'vd_bare_list_empty':    (lambda d: read_vd(d/'vd/org/train.json', path_map=MAP), 'vd/org/train.json', ''),
    'vd_tables_empty':       (lambda d: read_vd(d/'vd/org/train.json', path_map=MAP), 'vd/org/train_tables.json', '.id2question'),
    'vd_gold_empty':         (lambda d: read_vd_gold(d/'vd/test_gold.json'), 'vd/test_gold.json', '.data'),
    'vg_bbox_nan':           (lambda d: read_vg(d/'vg/train.json'), 'vg/train.json', '[0].bbox[1]'),
    'vd_options_99':         (lambda d: read_vd(d/'vd/test.json'), 'vd/test.json', '[0].dialog[2].answer_options'),
    'image_missing_bare_list': (lambda d: read_vd(d/'vd/org/train.json', image_root=d, path_map=MAP), 'vd/org/train.json', '[0].image'),
}

@pytest.mark.parametrize('name', list(READERS))
def test_readers_refuse_the_same_files(base, tmp_path, name):
    "The readers that train, generate and infer use raise one `DataError` at the same place as `validate`"
    group, rel, mut, *_ = CASES[name]
    d = fresh(base, tmp_path); mut(d/rel)
    read, at, where = READERS[name]
    with pytest.raises(DataError) as e: read(d)
    assert str(e.value).startswith(f'{d/at}{where}: '), str(e.value)

@pytest.mark.parametrize('task,name', [('vqa', 'vqa_gold_order'), ('vg', 'vg_gold_longer'), ('itr', 'itr_gold_unknown_image'),
                                       ('vd', 'vd_gold_wrong_question')])
def test_infer_preflight_compares_gold_with_the_inputs(base, tmp_path, task, name):
    "`infer` (and `train`, through `run_problems`) stops before predicting when the gold file does not match the test inputs"
    from cvlue_nb.infer import infer_problems, InferConfig
    d = fresh(base, tmp_path)
    fs = dict(records=d/task/'test.json', gold=d/task/'test_gold.json', vd_tables=None,
              images=d/task/'test_images.json', captions=d/task/'test_captions.json')
    if task != 'itr': fs.pop('images'), fs.pop('captions')
    assert infer_problems(task, fs, d, InferConfig(), progress=False) == []
    group, rel, mut, where, words = CASES[name]; mut(d/rel)
    probs = infer_problems(task, fs, d, InferConfig(), progress=False)
    assert any(p.startswith(f'{d/rel}{where}: ') and words in p for p in probs), probs

def test_whole_synthetic_folders_pair_gold_with_test(tmp_path, capsys):
    "All of a task folder in one command (train, val, test, gold, ...): clean, and each gold file found its test inputs"
    from cvlue_nb.synth import generate
    generate(tmp_path, seed=0, n_train=4, n_val=1, n_test=2, progress=False)
    for task, folder, ins in (('itr', 'IC', 'test_images.json and test_captions.json'), ('vqa', 'VQA', 'test.json'),
                              ('vg', 'VG', 'test.json'), ('vd', 'VD', 'test.json')):
        with pytest.raises(SystemExit) as e: main(['validate', '--task', task, *map(str, sorted((tmp_path/folder).glob('*.json'))),
                                                   '--image-root', str(tmp_path)])
        out = capsys.readouterr().out
        assert e.value.code == 0 and f'{tmp_path/folder/"test_gold.json"}: {task} gold file (compared with {ins})' in out, out
