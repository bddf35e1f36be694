"""Losses under torch.distributed: ITC/L_1 with features gathered across 2 gloo processes equal the single-process
losses on the concatenated batch, and the parameter gradients (averaged over ranks, as DDP does) equal the
single-process gradients."""
import os, tempfile
import pytest
import torch
import torch.nn.functional as F
import torch.multiprocessing as mp
import torch.distributed as dist

from cvlue_nb.losses import itc_loss, kl_y2t_x2t, gather_with_grad

SIZES = (3, 2)  # unequal per-rank batch sizes: the last batch of an epoch


def _data():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    return (torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g),
            torch.tensor([10, 11, 11, 12, 10]))  # image 10 has rows on both ranks, 11 two rows on rank 0


def _heads():
    torch.manual_seed(1)
    return torch.nn.Linear(6, 4), torch.nn.Linear(6, 4), torch.nn.Parameter(torch.tensor(0.3))


def _losses(img, txt, agi, ids, heads):
    pi, pt, temp = heads
    xf, tf, yf = (F.normalize(pi(img), dim=1), F.normalize(pt(txt), dim=1), F.normalize(pi(agi), dim=1))
    return itc_loss(xf, tf, temp, ids), kl_y2t_x2t(yf, xf, tf, temp, detach_target=False)


def _worker(rank, world, init_file, out_file):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        img, txt, agi, ids = _data()
        lo, hi = sum(SIZES[:rank]), sum(SIZES[:rank + 1])
        heads = _heads()
        itc, kl = _losses(img[lo:hi], txt[lo:hi], agi[lo:hi], ids[lo:hi], heads)
        (itc + kl).backward()
        params = [heads[0].weight, heads[1].weight, heads[2]]
        grads = [p.grad.clone() for p in params]
        for gr in grads: dist.all_reduce(gr); gr /= world          # what DDP does with parameter gradients
        gathered = gather_with_grad(ids[lo:hi])
        if rank == 0:
            torch.save(dict(itc=itc.detach(), kl=kl.detach(), grads=grads, ids=gathered), out_file)
    finally:
        dist.destroy_process_group()


def test_itc_gather_two_processes():
    tmp = tempfile.mkdtemp()
    init_file, out_file = os.path.join(tmp, 'init'), os.path.join(tmp, 'out.pt')
    mp.spawn(_worker, args=(2, init_file, out_file), nprocs=2, join=True)
    got = torch.load(out_file, weights_only=True)
    img, txt, agi, ids = _data()
    heads = _heads()
    itc, kl = _losses(img, txt, agi, ids, heads)
    (itc + kl).backward()
    assert torch.equal(got['ids'], ids)
    assert torch.allclose(got['itc'], itc, atol=1e-6), (got['itc'], itc)
    assert torch.allclose(got['kl'], kl, atol=1e-6), (got['kl'], kl)
    for g_dist, p in zip(got['grads'], [heads[0].weight, heads[1].weight, heads[2]]):
        assert g_dist.abs().sum() > 0
        assert torch.allclose(g_dist, p.grad, atol=1e-5), (g_dist, p.grad)
