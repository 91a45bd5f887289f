"""The report's ``index.html``: the jobs, their plots, and every test as a
coloured cell per job (harness/report/cells.py), the reason in its
tooltip and under the table for the ones that did not pass; and the
matrix's ``matrix.html``, the same cells as harness/tools/matrix.py
tabulates them.

One static page with relative links (to each job's ``results.html`` and
``job.log``, and to the PNGs beside it), so that the directory can be
copied or served as it is.  A few lines of script mark an image that did
not load, and count them in ``<body data-images="loaded/all">``, which the
suite's own test of the page reads from headless Chromium.
"""

import datetime
import html
import os
from typing import List, Optional, Sequence, Tuple

from .cells import KINDS, Cell, classify, test_row_name
from .plots import Plot
from .results import Job

LABELS = {'pass': 'pass', 'fixed?': 'known issue not reproduced (fixed upstream?)',
          'known': 'known issue', 'skip': 'cancel / skip with a reason', 'fail': 'fail',
          'not-run': 'not run'}
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
td.pass { background: #c8e6c9; } td.fixed\\? { background: #fff59d; }
td.known { background: #e1bee7; } td.skip { background: #e0e0e0; }
td.fail { background: #ef9a9a; } td.not-run { background: #fff; color: #999; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
p.broken { color: #b71c1c; font-weight: bold; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; }
"""
CHECK_IMAGES = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-images', (images.length - broken.length) + '/' + images.length);
  broken.forEach(function (i) {
    var note = document.createElement('p');
    note.className = 'broken';
    note.textContent = 'image missing: ' + i.getAttribute('src');
    i.parentNode.insertBefore(note, i.nextSibling);
  });
});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _link(target: Optional[str], out_dir: str, text: str) -> str:
    if not target:
        return ''
    return f'<a href="{_e(os.path.relpath(target, out_dir))}">{_e(text)}</a>'


def _jobs_table(jobs: Sequence[Job], out_dir: str) -> List[str]:
    rows = ['<table><tr><th>job</th><th>id</th><th>tests</th><th>pass</th><th>warn</th>'
            '<th>cancel</th><th>skip</th><th>fail</th><th>error</th><th>interrupt</th>'
            '<th>reports</th></tr>']
    for job in jobs:
        c = job.counts
        links = ' · '.join(filter(None, (
            _link(job.html, out_dir, 'results.html'),
            _link(os.path.join(job.path, 'job.log'), out_dir, 'job.log'))))
        rows.append(f'<tr><td>{_e(job.label)}</td><td>{_e(job.job_id[:12])}</td>'
                    f'<td>{len(job.tests)}</td><td>{c["pass"]}</td><td>{c["warn"]}</td>'
                    f'<td>{c["cancel"]}</td><td>{c["skip"]}</td><td>{c["failures"]}</td>'
                    f'<td>{c["errors"]}</td><td>{c["interrupt"]}</td><td>{links}</td></tr>')
    rows.append('</table>')
    return rows


def _plots(plotted: Sequence[Tuple[Plot, Optional[str]]], out_dir: str) -> List[str]:
    out = []
    for plot, path in plotted:
        if path:
            out.append(f'<figure><img src="{_e(os.path.relpath(path, out_dir))}" '
                       f'alt="{_e(plot.title)}"><figcaption>{_e(plot.title)} '
                       f'({_e(plot.unit)})</figcaption></figure>')
        else:
            out.append(f'<p>{_e(plot.title)}: no test of these jobs recorded '
                       f'{_e(", ".join(plot.figures))}.</p>')
    return out


def cells(jobs: Sequence[Job]) -> Tuple[List[str], List[List[Cell]]]:
    """Row names (every test of any job, sorted) and one Cell per job."""
    # By row name: one test's full name differs between jobs run from
    # different directories (tests/functional/x.py, /abs/path/x.py).
    by_row = [{test_row_name(name): test for name, test in job.raw.items()} for job in jobs]
    rows = sorted({row for tests in by_row for row in tests})
    grid = [[classify(tests[row]) if row in tests else Cell('not-run', 'not run')
             for tests in by_row] for row in rows]
    return rows, grid


def _results_table(jobs: Sequence[Job]) -> List[str]:
    rows, grid = cells(jobs)
    out = [_legend(), '<table><tr><th>test</th>' + ''.join(f'<th>{_e(j.label)}</th>' for j in jobs) + '</tr>']
    for row, row_cells in zip(rows, grid):
        out.append(f'<tr><td>{_e(row)}</td>' + ''.join(
            f'<td class="{_e(c.kind)}" title="{_e(c.detail or c.text)}">{_e(c.text)}</td>'
            for c in row_cells) + '</tr>')
    out.append('</table>')
    reasons = [(row, job.label, c) for row, row_cells in zip(rows, grid)
               for job, c in zip(jobs, row_cells) if c.kind not in ('pass', 'not-run')]
    if reasons:
        out += ['<h2>Why the others did not pass</h2>', '<ul>']
        out += [f'<li><b>{_e(row)}</b> ({_e(label)}): {_e(c.detail or c.text)}</li>'
                for row, label, c in reasons]
        out.append('</ul>')
    return out


def _write(path: str, title: str, body: Sequence[str]) -> str:
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n'
            + '\n'.join(body) + f'\n<script>{CHECK_IMAGES}</script>\n</body></html>\n')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(page)
    os.replace(path + '.tmp', path)
    return path


def _legend() -> str:
    return '<p class="legend">' + ''.join(
        f'<span class="{k}" style="border:1px solid #ccc">{_e(LABELS[k])}</span>'
        for k in KINDS) + '</p>'


def render_matrix(matrix: dict, out_dir: str) -> str:
    """``out_dir/matrix.html``: harness/tools/matrix.py's table (rows:
    scenario × transport; columns: the variants) as coloured cells,
    each cell's reason in its tooltip; returns its path."""
    columns = matrix['columns']
    head = ''.join(f"<th>{_e(c['label'])}"
                   + (f"<br><code>{_e(c['subject'])}</code>" if c.get('subject') else '')
                   + (f"<br>{_e(c['settings'])}" if c.get('settings') else '') + '</th>'
                   for c in columns)
    rows = ['<table><tr><th>scenario</th><th>transport</th>' + head + '</tr>']
    for row in matrix['rows']:
        info = matrix.get('row_info', {}).get(row) or {'scenario': row, 'transport': ''}
        transport = info.get('transport') or '—'
        if info.get('test_class'):
            transport += f" ({info['test_class']})"
        cells = ''.join(
            f'<td class="{_e(cell["kind"])}" title="{_e(cell.get("detail") or cell["text"])}">'
            f'{_e(cell["text"])}</td>'
            for cell in (matrix['cells'][row][c['label']] for c in columns))
        rows.append(f"<tr><td>{_e(info['scenario'])}</td><td>{_e(transport)}</td>{cells}</tr>")
    rows.append('</table>')
    title = 'Multi-process QEMU test matrix'
    return _write(os.path.join(out_dir, 'matrix.html'), title, [
        f'<h1>{_e(title)}</h1>',
        f"<p>Generated {_e(matrix.get('generated', ''))} from "
        f"<code>{_e(matrix.get('variants', ''))}</code>; tags: "
        f"<code>{_e(matrix.get('tags', ''))}</code>.  The known issues' evidence is in "
        f'<a href="matrix.md">matrix.md</a>.</p>', _legend(), *rows])


def render(jobs: Sequence[Job], plotted: Sequence[Tuple[Plot, Optional[str]]],
           out_dir: str, title: str = 'Multi-process QEMU test report') -> str:
    """Write ``out_dir/index.html``; returns its path."""
    when = datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')
    body = [f'<h1>{_e(title)}</h1>', f'<p>Generated {_e(when)}.</p>', '<h2>Jobs</h2>',
            *_jobs_table(jobs, out_dir), '<h2>Figures</h2>', *_plots(plotted, out_dir),
            '<h2>Results</h2>', *_results_table(jobs)]
    return _write(os.path.join(out_dir, 'index.html'), title, body)
