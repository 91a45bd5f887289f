"""The report of a job (harness/tools/report.py): Avocado's own
results.html from the plugin, plots of the figures, the coloured table,
and the page checked in a real headless Chromium."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from harness.mpqemu.topology import IN_PROCESS, PROXY
from harness.report import page, plots
from harness.report.results import Job, read_job
from harness.tools import report

from avocado_job import AvocadoJob

CHROMIUM = shutil.which('chromium')
CHROMIUM_TIMEOUT_S = 60
BOOT = 'tests/functional/test_boot.py'
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def finished_job(tmp_path_factory):
    """A real Avocado job of the suite's configuration: one test that
    records figures (one of them a spread), one that fails."""
    tmp_path = tmp_path_factory.mktemp('job')
    (tmp_path / 'runs').mkdir()
    job = AvocadoJob(tmp_path, 'soak_runs.py', ['Steady.test_steady', 'Fails.test_fails'],
                     env={'SOAK_RUNS_DIR': str(tmp_path / 'runs')})
    job.end()
    return tmp_path / 'results' / 'latest'


def links(index):
    """Every href and src of a page."""
    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in ('href', 'src'))
    Parser().feed(index.read_text(encoding='utf-8'))
    return found


def rendered(index):
    """The page's DOM after Chromium loaded it and ran its script."""
    proc = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu',
                           '--virtual-time-budget=5000', '--dump-dom', index.as_uri()],
                          capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
                          check=True)
    return proc.stdout


def test_every_job_has_avocado_html_report(finished_job):
    html = finished_job / 'results.html'
    assert html.is_file(), 'avocado-framework-plugin-result-html wrote no results.html'
    text = html.read_text(encoding='utf-8')
    assert 'test_steady' in text and 'test_fails' in text


def test_report_of_a_job_links_what_exists(finished_job):
    assert report.main([str(finished_job)]) == 0
    index = finished_job / 'report' / 'index.html'
    targets = links(index)
    assert '../results.html' in targets and '../job.log' in targets
    assert 'plots/test-durations.png' in targets
    for target in targets:
        assert (index.parent / target).exists(), f'{index} links to a missing {target}'
    page = index.read_text(encoding='utf-8')
    assert re.search(r'<td class="pass"[^>]*>pass</td>', page)
    assert re.search(r'<td class="fail" title="[^"]*fails every run', page), page[-2000:]


@pytest.mark.skipif(not CHROMIUM, reason='no chromium: make check installs it (Debian package)')
def test_the_page_renders_with_every_image_in_chromium(finished_job, tmp_path):
    out = tmp_path / 'report'
    index = report.write([str(finished_job)], str(out))
    drawn = len(list((out / 'plots').glob('*.png')))
    assert drawn >= 1
    assert f'data-images="{drawn}/{drawn}"' in rendered(out / 'index.html')
    # The page's own check is what the assert reads: a lost image shows.
    os.remove(out / 'plots' / 'test-durations.png')
    dom = rendered(out / 'index.html')
    assert f'data-images="{drawn - 1}/{drawn}"' in dom
    assert 'image missing: plots/test-durations.png' in dom
    assert index == str(out / 'index.html')


def test_a_directory_without_a_finished_job_is_refused(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert f'{tmp_path}/results.json' in capsys.readouterr().err
    assert not (tmp_path / 'report').exists()


def job(label, tests):
    """A Job from {name: (transport tags, figures)}."""
    return Job(label, '/nonexistent', label, {}, {
        name: {'status': 'PASS', 'reason': '', 'tags': tags, 'figures': figures}
        for name, (tags, figures) in tests.items()},
        {name: {'name': name, 'status': 'PASS', 'tags': tags}
         for name, (tags, _) in tests.items()})


REMOTE = f'{BOOT}:BootFromRemoteLsi.test_tiny_kernel_boot_with_lsi_data_disk'
CONTROL = f'{BOOT}:BootFromInProcessLsi.test_tiny_kernel_boot_with_lsi_data_disk'


def test_bars_pool_jobs_and_keep_recorded_spreads():
    spread = {'interrupt_latency_us.median': 700.0, 'interrupt_latency_us.p10': 600.0,
              'interrupt_latency_us.p90': 2000.0, 'interrupt_latency_us.n': 999}
    one = job('a', {REMOTE: ({}, {'boot_to_ssh_s': 5.0, **spread})})
    two = job('b', {REMOTE: ({}, {'boot_to_ssh_s': 6.0})})
    boot = next(p for p in plots.PLOTS if p.name == 'boot-to-ssh')
    (bar,) = plots.bars([one, two], boot)
    assert (bar.value, bar.low, bar.high, bar.n) == (5.5, 5.0, 6.0, 2)
    assert bar.transport == PROXY
    irq = next(p for p in plots.PLOTS if p.name == 'interrupt-latency')
    (bar,) = plots.bars([one], irq)
    assert (bar.value, bar.low, bar.high, bar.n) == (700.0, 600.0, 2000.0, 999)


def test_ratios_put_each_remote_over_its_control_in_the_same_job():
    first = job('a', {REMOTE: ({}, {'boot_to_ssh_s': 6.0}),
                      CONTROL: ({'control': None}, {'boot_to_ssh_s': 4.0})})
    second = job('b', {REMOTE: ({}, {'boot_to_ssh_s': 5.0}),
                       CONTROL: ({'control': None}, {'boot_to_ssh_s': 5.0})})
    lonely = job('c', {REMOTE: ({}, {'boot_to_ssh_s': 50.0})})      # no control: no ratio
    (bar,) = plots.ratios([first, second, lonely])
    assert bar.transport == PROXY and bar.n == 2
    assert (bar.value, bar.low, bar.high) == (1.25, 1.0, 1.5)
    assert IN_PROCESS not in {b.transport for b in plots.ratios([first])}


def test_the_suite_results_of_a_real_job_read_back(finished_job):
    read = read_job(str(finished_job))
    steady = next(t for n, t in read.tests.items() if n.endswith('Steady.test_steady'))
    assert steady['status'] == 'PASS'
    assert steady['figures']['latency_ms'] == 10.0
    assert steady['figures']['round_trip.n'] == 100
    assert read.counts['pass'] == 1 and read.counts['failures'] == 1
    assert len(read.raw) == 2 and read.html == os.path.join(read.path, 'results.html')


def test_one_test_is_one_row_whatever_directory_its_job_ran_from():
    relative = job('a', {REMOTE: ({}, {'boot_to_ssh_s': 5.0})})
    absolute = job('b', {f'/srv/ci/{REMOTE}': ({}, {'boot_to_ssh_s': 6.0})})
    rows, grid = page.cells([relative, absolute])
    assert rows == ['test_boot:BootFromRemoteLsi.test_tiny_kernel_boot_with_lsi_data_disk']
    assert [cell.kind for cell in grid[0]] == ['pass', 'pass']
