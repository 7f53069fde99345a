"""Write README.md from nbs/index.ipynb (what `nbdev-readme` does with Quarto, without it).
Markdown cells are copied, code cells become fenced Python with their text outputs below them.
Usage: python tools/make_readme.py [--check]   (--check: fail if README.md is out of date)"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb: dict) -> str:
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        lines = [l for l in src.splitlines() if not l.startswith('#|')]
        if any(l.startswith('#|') and ('hide' in l or 'export' in l) for l in src.splitlines()): continue
        body = '\n'.join(lines).strip()
        if not body: continue
        if c['cell_type'] == 'markdown': parts.append(body); continue
        parts.append(f'```python\n{body}\n```')
        out = ''.join(''.join(o.get('text', '')) if o['output_type'] == 'stream' else ''.join(o.get('data', {}).get('text/plain', ''))
                      for o in c.get('outputs', []))
        if out.strip(): parts.append(f'```\n{out.rstrip()}\n```')
    return '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n' + '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    text = render(json.loads((ROOT / 'nbs' / 'index.ipynb').read_text()))
    readme = ROOT / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text: sys.exit('README.md is out of date with nbs/index.ipynb: run `make readme`')
        print('README.md agrees with nbs/index.ipynb')
    else: readme.write_text(text); print('wrote', readme)
