"""One command for a CUDA machine: each task's `base` model (random weights, XLM-R-size vocabulary) trained for 20
steps through the Trainer's own step, at the real resolution and the baseline's per-GPU batch, in fp32 and bf16;
step time, peak memory and MFU printed; then 2 steps of a tiny diffusers pipeline on the GPU.

    python tools/gpu_check.py                      # on a CUDA machine (about 5 minutes on one H200)
    python tools/gpu_check.py --device cpu --preset tiny --steps 2    # the same code on a CPU (what CI runs)

Writes gpu_check.json next to where it runs (or --out). MFU is FLOPs counted by torch's FlopCounterMode over the
measured step time, divided by the dense peak of the dtype (bf16: PEAK_BF16_TFLOPS; fp32 without TF32: PEAK_FP32_TFLOPS).
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from cvlue_nb.bench import (bench_config, bench_trainer, synthetic_batch, trainer_step, step_flops, peak_flops, cvlue_batch)
from cvlue_nb.text2img import DiffusersBackend, tiny_sd_pipeline

PEAK_FP32_TFLOPS = [('H200', 67.0), ('H100 PCIe', 51.0), ('H100', 67.0), ('A100', 19.5), ('V100', 15.7)]

def fp32_peak(name):
    return next((t * 1e12 for k, t in PEAK_FP32_TFLOPS if k.lower() in name.lower()), None)

def check_task(task, preset, amp, steps, device, batch=None):
    "20 timed steps (after 2 warm-up steps) of one task in one dtype; the batch halves on out-of-memory"
    b = batch or (cvlue_batch(task) if preset == 'base' else 4)
    while True:
        try:
            cfg = bench_config(task, preset, b, agi=True, amp=amp)
            t = bench_trainer(cfg, device, steps + 2)
            bt = synthetic_batch(task, t.model.config, b, preset, 0, device)
            cuda = torch.device(device).type == 'cuda'
            if cuda: torch.cuda.reset_peak_memory_stats()
            for _ in range(2): trainer_step(t, bt)
            times = [trainer_step(t, bt)['step'] for _ in range(steps)]
            flops = step_flops(t, bt)
            ms = statistics.median(times) * 1e3
            row = dict(task=task, preset=preset, dtype='bf16' if (amp and cuda) else 'fp32', batch=b,
                       image_res=t.model.config.image_res, params_m=round(sum(p.numel() for p in t.model.parameters()) / 1e6, 1),
                       steps=steps, step_ms=round(ms, 1), gflops=round(flops / 1e9, 1))
            if cuda:
                name = torch.cuda.get_device_name(device)
                peak = peak_flops(name) if row['dtype'] == 'bf16' else fp32_peak(name)
                row.update(gpu=name, peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                           mfu=round(flops / (ms / 1e3) / peak, 3) if peak else None)
            del t; torch.cuda.empty_cache() if cuda else None
            return row
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if b == 1: raise
            b //= 2

def check_diffusers(device, steps=2):
    "A tiny random diffusers pipeline, `steps` denoising steps on two prompts, on the device"
    with tempfile.TemporaryDirectory() as d:
        be = DiffusersBackend(pipeline=tiny_sd_pipeline(d, 0), steps=steps, device=device)
        t0 = time.perf_counter(); ims = be(['红色圆形', '蓝色方形'], [0, 1]); dt = time.perf_counter() - t0
    return dict(diffusers_images=len(ims), size=list(ims[0].size), seconds=round(dt, 2), device=str(device))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda'); p.add_argument('--preset', default='base', choices=['base', 'tiny'])
    p.add_argument('--steps', type=int, default=20); p.add_argument('--tasks', default='itr,vqa,vd,vg')
    p.add_argument('--batch', type=int, help='per-GPU batch (default: the baseline\'s, cvlue preset)')
    p.add_argument('--out', default='gpu_check.json')
    a = p.parse_args(argv)
    if a.device.startswith('cuda') and not torch.cuda.is_available():
        print('error: no CUDA device here; this check is for a GPU machine (use --device cpu --preset tiny to try the code)',
              file=sys.stderr); return 2
    t0, rows = time.time(), []
    for task in a.tasks.split(','):
        for amp in (False, True):
            r = check_task(task, a.preset, amp, a.steps, a.device, a.batch); rows.append(r)
            print(json.dumps(r, ensure_ascii=False), flush=True)
    diff = check_diffusers(a.device); print(json.dumps(diff), flush=True)
    res = dict(rows=rows, diffusers=diff, seconds=round(time.time() - t0, 1), torch=torch.__version__)
    Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding='utf-8')
    print(f'| task | dtype | batch | res | step (ms) | peak mem (GiB) | MFU |\n|---|---|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f"| {r['task']} | {r['dtype']} | {r['batch']} | {r['image_res']} | {r['step_ms']} | {r.get('peak_mem_gib', '–')} | {r.get('mfu', '–')} |")
    print(f'gpu_check: {len(rows)} runs + diffusers in {res["seconds"]} s; wrote {a.out}')
    return 0

if __name__ == '__main__': sys.exit(main())
