"""The fleet run (harness/tools/qualify.py) for real: test hosts made as
network namespaces on this machine (harness/fleet/netns.py), each with its
own address, host name and sshd, a job spread over them with the bounded
remote spawner, and a host killed in the middle of a test."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from harness.base import leftovers, paths
from harness.base.waiting import wait_until
from harness.base.errors import HarnessError
from harness.fleet import hosts as fleet_hosts
from harness.fleet import netns
from harness.tools import qualify

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='namespace hosts need root')

FIXTURE = os.path.join('tests', 'jobs', 'fleet.py')
WHERE = [f'{FIXTURE}:Where.test_{x}' for x in 'abcd']
JOB_TIMEOUT_S = 240
KILL_WAIT_S = 60
LEFTOVER_BOUND_S = 5.0
# The job's end after a host is lost: the keep-alives' 15 s, the tests left
# and the report, on a busy machine; without the spawner's handling, hours.
HOST_LOSS_BOUND_S = 60.0
# A small real set of the suite: the LSI through the mpqemu protocol, less
# the v8 heartbeat's test (upstream QEMU has none: it cancels, a capability).
SUITE_TAGS = 'protocol,-vfio-user,-heartbeat'


def write_hosts(path, made, *extra):
    path.write_text(json.dumps({'controller': netns.CONTROLLER_ADDRESS, 'hosts': [
        {'name': h.name, 'address': h.address, 'identity_file': made.identity}
        for h in made.hosts] + list(extra)}))
    return str(path)


@pytest.fixture
def fleet(tmp_path):
    with netns.NamespaceFleet(2, str(tmp_path / 'hosts')) as made:
        made.hosts_file = write_hosts(tmp_path / 'hosts.json', made)
        yield made
    assert netns.leftovers() == []


def qualify_job(fleet, out, *args):
    """The fleet run as `make qualify` starts it, in a session of its own,
    with a leftover token of its own."""
    token = f'fleet-{os.getpid()}-{time.monotonic_ns()}'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'harness.tools.qualify', '--hosts', fleet.hosts_file,
         '--out', str(out), *args], cwd=paths.REPO_DIR, start_new_session=True,
        env=dict(os.environ, **{leftovers.TOKEN_VARIABLE: token}),
        stdout=open(out.parent / 'qualify.out', 'wb'), stderr=subprocess.STDOUT)
    proc.token = token
    return proc


def end(proc, out, lost_host=None):
    """The job's exit status and results once it returned; nothing of it
    may be left running (on a host cut off, its tests are that host's
    business: the host is killed first, as the fixture would)."""
    try:
        proc.wait(JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f'the fleet job did not end in {JOB_TIMEOUT_S} s')
    if lost_host:
        lost_host.kill()
    left = leftovers.wait_none(proc.token, LEFTOVER_BOUND_S)
    assert not left, leftovers.describe(left)
    with open(out / 'latest' / 'results.json', encoding='utf-8') as f:
        return proc.returncode, json.load(f)


def hosts_of(results):
    """{test: the host its whiteboard names} of the tests that recorded one."""
    found = {}
    for test in results['tests']:
        try:
            found[test['name']] = json.loads(test['whiteboard'])['host']
        except (ValueError, KeyError, TypeError):
            pass
    return found


@pytest.mark.slow
@needs_root
def test_the_suite_spreads_over_two_hosts_into_one_job(fleet, tmp_path):
    out = tmp_path / 'out'
    listed = subprocess.run(
        [os.path.join(paths.REPO_DIR, 'build', 'venv', 'bin', 'avocado'), '--config',
         qualify.SUITE_CONF, 'list', *qualify.tag_filters(SUITE_TAGS), qualify.SUITE],
        cwd=paths.REPO_DIR, capture_output=True, text=True, check=True, timeout=120)
    expected = {line.split()[-1] for line in listed.stdout.splitlines() if line.strip()}
    assert len(expected) >= 4
    rc, results = end(qualify_job(fleet, out, '--tags', SUITE_TAGS), out)
    assert rc == 0, results
    assert {t['name'] for t in results['tests']} == expected      # one job, all of them
    for test in results['tests']:           # as on one machine: known issues cancel
        assert (test['status'] in ('PASS', 'WARN') or test['status'] == 'CANCEL'
                and test['fail_reason'].startswith('KNOWN ISSUE')), test
    assert sum(t['status'] == 'PASS' for t in results['tests']) >= 4
    ran_on = hosts_of(results)
    assert set(ran_on.values()) == {h.name for h in fleet.hosts}, ran_on
    assert os.path.isfile(out / 'latest' / 'results.html')
    assert os.path.isfile(out / 'latest' / 'report' / 'index.html')


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize('how', ['killed', 'cut off'])
def test_a_host_lost_mid_test_ends_that_test_as_an_error(fleet, tmp_path, how):
    """Killed: everything in its namespace gets SIGKILL, its SSH sessions
    end at once.  Cut off: its link goes down and it answers nothing; the
    keep-alives give up after 15 s."""
    out = tmp_path / 'out'
    proc = qualify_job(fleet, out, '--suite', f'{FIXTURE}:Lost.test_lost', *WHERE)

    def marked():
        found = glob.glob(str(out / 'job-*' / 'test-results' / '*' / 'host-to-kill'))
        return found and open(found[0], encoding='utf-8').read().strip()
    doomed = wait_until(marked, KILL_WAIT_S, 'the Lost test naming its host')
    killed = next(h for h in fleet.hosts if h.name == doomed)
    killed_at = time.monotonic()
    if how == 'killed':
        killed.kill()
    else:
        killed.cut_off()
    rc, results = end(proc, out, lost_host=killed if how == 'cut off' else None)
    ended_s = time.monotonic() - killed_at
    assert rc != 0
    by_name = {t['name']: t for t in results['tests']}
    assert len(by_name) == 1 + len(WHERE) == results['total']       # none left out
    lost = by_name[f'{FIXTURE}:Lost.test_lost']
    assert lost['status'] == 'ERROR', lost
    assert f'test host {killed.address}:22 lost' in lost['fail_reason']
    survivor = next(h.name for h in fleet.hosts if h is not killed)
    for name in WHERE:
        assert by_name[name]['status'] == 'PASS', by_name[name]
    # Once the kill is seen, nothing more runs on the dead host.
    after = [n for n in WHERE if by_name[n]['actual_time_start'] > time.time() - ended_s]
    assert after, 'every test had ended before the kill: nothing tells where the rest ran'
    assert all(hosts_of(results)[n] == survivor for n in after)
    assert results['skip'] == 0
    # Bounded: a killed host is seen when its session dies, a silent one at
    # the keep-alives' deadline, not at TCP's (hours).
    assert ended_s < HOST_LOSS_BOUND_S, f'the job took {ended_s:.1f} s after the kill'
    print(f'host {how}: the job ended {ended_s:.1f} s later')


@pytest.mark.slow
@needs_root
def test_a_host_that_never_logs_in_is_not_used(fleet, tmp_path):
    """Nothing listens at 127.77.0.200: its slot is retired at the first
    login and every test runs on the hosts that are there."""
    fleet.hosts_file = write_hosts(tmp_path / 'with-a-dead-one.json', fleet,
                                   {'name': 'absent', 'address': f'{netns.NETWORK}.200',
                                    'identity_file': fleet.identity})
    out = tmp_path / 'out'
    rc, results = end(qualify_job(fleet, out, '--suite', *WHERE), out)
    assert rc == 0, results
    assert [t['status'] for t in results['tests']] == ['PASS'] * len(WHERE)
    assert set(hosts_of(results).values()) <= {h.name for h in fleet.hosts}
    job_log = (out / 'latest' / 'job.log').read_text(errors='replace')
    assert f'test host {netns.NETWORK}.200:22' in job_log and 'login failed' in job_log


@pytest.mark.parametrize('hosts, says', [
    ({'hosts': [{'address': 'h'}]}, 'needs "controller"'),
    ({'controller': 'c', 'hosts': []}, 'non-empty "hosts"'),
    ({'controller': 'c', 'hosts': [{'name': 'a'}]}, 'host 1: a host needs at least an "address"'),
    ({'controller': 'c', 'hosts': [{'address': 'h', 'slot': 2}]}, "unknown keys ['slot']"),
    ({'controller': 'c', 'hosts': [{'address': 'h', 'port': '22'}]}, '"port" must be a positive'),
    ({'controller': 'c', 'hosts': [{'address': 'h'}, {'address': 'h'}]}, 'host names repeat'),
])
def test_a_bad_hosts_file_is_refused_naming_the_cause(tmp_path, hosts, says):
    path = tmp_path / 'hosts.json'
    path.write_text(json.dumps(hosts))
    with pytest.raises(HarnessError, match=re.escape(says)):
        fleet_hosts.load(str(path))
    path.write_text('{"controller": ')
    with pytest.raises(HarnessError, match='is not JSON'):
        fleet_hosts.load(str(path))


def test_slot_files_log_in_by_key_with_keep_alives(tmp_path):
    path = tmp_path / 'hosts.json'
    path.write_text(json.dumps({'controller': 'c', 'hosts': [
        {'name': 'a', 'address': '192.0.2.10', 'slots': 2, 'identity_file': '/k'},
        {'address': '192.0.2.11', 'port': 2222}]}))
    fleet = fleet_hosts.load(str(path))
    assert fleet.slots == 3
    slots = fleet_hosts.write_slots(fleet, str(tmp_path / 'slots'))
    assert [os.path.basename(p) for p in slots] == ['a-1.json', 'a-2.json', '192.0.2.11-1.json']
    with open(slots[2], encoding='utf-8') as f:
        login = json.load(f)
    assert (login['host'], login['port'], login['username']) == ('192.0.2.11', 2222, 'root')
    assert login['preferred_authentication'] == 'publickey'
    assert 'ServerAliveInterval' in login['extra_cmdline']
