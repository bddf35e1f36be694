"""Write the shipped YAML presets `cvlue_nb/configs/<task>.yaml` from the task registry (`cvlue_nb.tasks`).

    python tools/make_configs.py          # write them
    python tools/make_configs.py --check  # exit 1 if a shipped file differs from the registry

The presets live in `TaskSpec.presets`; the YAML files are package data for users to copy and edit. The notebook
`11a_run` checks that the shipped files equal what this writes.
"""
import sys
from cvlue_nb.core import atomic_write_text
from cvlue_nb.run import preset_yaml, configs_dir

def main(check=False):
    stale = []
    for t in ('itr', 'vqa', 'vd', 'vg'):
        p, text = configs_dir()/f'{t}.yaml', preset_yaml(t)
        if p.exists() and p.read_text(encoding='utf-8') == text: continue
        stale.append(p.name)
        if not check: atomic_write_text(p, text)
    if check and stale: print(f'stale presets: {stale}; run python tools/make_configs.py'); return 1
    print(('checked' if check else 'wrote') + f' {4 - (len(stale) if check else 0)}/4 presets' + (f' (updated {stale})' if stale and not check else ''))
    return 0

if __name__ == '__main__': sys.exit(main('--check' in sys.argv))
