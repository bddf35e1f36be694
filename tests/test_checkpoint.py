"Checkpoint import: key lists of every task, file formats, the tying switch, shape errors, a forward pass after import"
import argparse
import numpy as np
import pytest
import torch
from cvlue_nb.core import CvlueError
from cvlue_nb.checkpoint import (convert_x2vlm_state_dict, geometric_coords, geometric_q, load_x2vlm_checkpoint,
                                 read_checkpoint, reference_keys, resize_rel_pos_bias, state_dict_from_keys,
                                 tiny_cclm_state_dict)
from cvlue_nb.model import X2VLM, X2VLMConfig

TASKS = ('itr', 'vqa', 'vd', 'vg')

@pytest.fixture(scope='module')
def cclm():
    return state_dict_from_keys(reference_keys('cclm'), real=('relative_position_bias_table',))

@pytest.fixture(scope='module')
def tiny_ck(): return tiny_cclm_state_dict()

def test_key_lists_ship_with_the_package():
    "The five key lists are package data: found wherever cvlue_nb is installed, no checkout or shared/ folder needed"
    from importlib.resources import files
    assert {k: len(reference_keys(k)) for k in ('cclm', *TASKS)} == dict(cclm=587, itr=574, vqa=732, vd=732, vg=569)
    assert sorted(p.name for p in (files('cvlue_nb')/'reference').iterdir() if p.name.endswith('.json')) == [
        'cclm_x2vlm_base_ckpt_keys_inferred.json', *(f'x2vlm_base_{t}_keys.json' for t in ('itr', 'vd', 'vg', 'vqa'))]
    with pytest.raises(CvlueError, match="unknown key list 'base'"): reference_keys('base')

def _partition_ok(rep, n):
    c = rep.counts()
    assert c['unexplained'] == 0, (rep.unexplained_missing, rep.unexplained_unexpected)
    assert c['loaded'] + c['resized'] + c['copied'] + c['tied'] + c['missing'] == n

@pytest.mark.parametrize('task', TASKS)
def test_key_lists_zero_unexplained(cclm, task):
    target = state_dict_from_keys(reference_keys(task))
    sd, rep = convert_x2vlm_state_dict(cclm, target, task)
    _partition_ok(rep, len(target))
    rows = 9028 if task == 'vqa' else 2212
    assert len(rep.resized) == 12
    for k in rep.resized: assert tuple(sd[k].shape) == (rows, 12) and not sd[k].is_meta
    if task in ('vqa', 'vd'):
        assert rep.copied['text_decoder.bert.encoder.layer.0.attention.self.query.weight'] == 'cross_encoder.encoder.layer.0.attention.self.query.weight'
        assert rep.copied['text_decoder.cls.predictions.transform.dense.weight'] == 'mlm_head.predictions.transform.dense.weight'
        assert rep.copied['text_decoder.bert.embeddings.LayerNorm.weight'] == 'text_encoder.embeddings.LayerNorm.weight'
    if task == 'vg': assert 'bbox_head.3.weight' in rep.loaded

@pytest.mark.parametrize('task', TASKS)
def test_real_base_model_meta(cclm, task):
    with torch.device('meta'): m = X2VLM(X2VLMConfig.base(task))
    rep = load_x2vlm_checkpoint(m, cclm, verbose=False)
    _partition_ok(rep, len(m.state_dict()))
    assert set(rep.resized.values()) == {'27×27→95×95' if task == 'vqa' else '27×27→47×47'}

def test_q_and_smooth_resize():
    assert abs(geometric_q(27, 47) - 1.090307) < 1e-6 and abs(geometric_q(27, 95) - 1.195487) < 1e-6
    xs = geometric_coords(27, geometric_q(27, 47))
    f = lambda y, x: np.cos(0.1 * y) + 0.05 * x
    src = torch.tensor(f(*np.meshgrid(xs, xs, indexing='ij')), dtype=torch.float64).reshape(-1, 1)
    out = resize_rel_pos_bias(torch.cat([src, torch.full((3, 1), 7.0, dtype=torch.float64)]), 27, 47)
    d = np.arange(-23, 24)
    assert np.abs(out[:-3].view(47, 47).numpy() - f(*np.meshgrid(d, d, indexing='ij'))).max() < 1e-3
    assert (out[-3:] == 7).all()

def test_files_and_forward(tmp_path, tiny_ck):
    torch.save({'model': tiny_ck, 'config': {'image_res': 40}}, tmp_path/'a.th')
    torch.save(tiny_ck, tmp_path/'legacy.pt', _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file
    save_file({k: v.clone().contiguous() for k, v in tiny_ck.items()}, str(tmp_path/'a.safetensors'))
    x, ids = torch.randn(2, 3, 64, 64), torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
    for name in ('a.th', 'legacy.pt', 'a.safetensors'):
        m = X2VLM(X2VLMConfig.tiny('vqa')).eval()
        rep = load_x2vlm_checkpoint(m, tmp_path/name, verbose=False)
        assert rep.counts()['unexplained'] == 0
        assert torch.equal(m.text_decoder.cls.predictions.bias.detach(), tiny_ck['mlm_head.predictions.bias'])
        with torch.no_grad(): out = m(x, ids, (ids != 1).long(), ids[:, :3], torch.ones(2, 3, dtype=torch.long))
        assert out['answer_logits'].shape == (2, 3, 1024) and torch.isfinite(out['answer_logits']).all()

def test_pickled_code_refused(tmp_path):
    torch.save({'model': {}, 'args': argparse.Namespace(a=1)}, tmp_path/'p.th')
    with pytest.raises(CvlueError, match='argparse.Namespace.*weights_only=True'): read_checkpoint(tmp_path/'p.th')

def test_tying_quirk(tiny_ck):
    E, M = tiny_ck['text_encoder.embeddings.word_embeddings.weight'], tiny_ck['mlm_head.predictions.decoder.weight']
    for quirk, want in ((False, E), (True, M)):
        m = X2VLM(X2VLMConfig.tiny('vd'))
        rep = load_x2vlm_checkpoint(m, tiny_ck, reproduce_tying_quirk=quirk, verbose=False)
        assert torch.equal(m.text_encoder.embeddings.word_embeddings.weight.detach(), want)
        assert m.text_decoder.cls.predictions.decoder.weight is m.text_encoder.embeddings.word_embeddings.weight
        assert rep.counts()['unexplained'] == 0

def test_errors(tiny_ck):
    m = X2VLM(X2VLMConfig.tiny('itr', text_width=32, text_heads=2))
    with pytest.raises(CvlueError, match='shape mismatches'): load_x2vlm_checkpoint(m, tiny_ck, verbose=False)
    m = X2VLM(X2VLMConfig.tiny('itr'))
    sd = dict(tiny_ck); del sd['itm_head.0.weight']
    before = m.text_proj.weight.detach().clone()
    with pytest.raises(CvlueError, match='itm_head.0.weight'): load_x2vlm_checkpoint(m, sd, verbose=False)
    assert torch.equal(m.text_proj.weight.detach(), before)   # refused before touching the model
