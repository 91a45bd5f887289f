"""Avocado's ``remote`` spawner, bounded: the suite's fleet runs with
``--spawner=mpqemu-fleet`` (harness/tools/qualify.py sets it up).

avocado-framework-plugin-spawner-remote 113.0 gives one SSH session
(aexpect) per slot file and runs each task's runner there.  As it is, a
fleet run would go wrong in ways a qualification cannot afford:

- a host that dies mid-test turns into a "failed start": its test is left
  out of results.json and counted as a SKIP, the job still exits 0, and
  the dead slot, first in the list, swallows every test after it;
- a silent host (powered off, network gone) hangs the task for the
  plugin's 4 h session timeout, read from a config file as a string that
  aexpect then cannot add to a number;
- ``is_task_alive`` runs ``pgrep`` in a session that another task may be
  using by then;
- the sessions and their aexpect helpers outlive the job.

Here each task's runner runs to its end inside ``spawn_task`` (the slot
stays reserved for that long), so a task is never "alive" after it.  A
session that is gone when its command returns (the host died, SSH dropped,
keep-alives went unanswered: ``ServerAliveInterval`` in the slot file,
harness/fleet/hosts.py) is retired, and the test ends as an ERROR naming
the host, through the same status server its runner reports to.  A task
that finds no live slot left ends the same way at once.  The sessions
are closed when the job ends (``FleetSessions``, a job post hook).
"""

import asyncio
import json
import logging
import shlex
import time
from typing import Dict, Optional

from aexpect import remote
from aexpect.exceptions import ShellError
from avocado.core.nrunner.task import TaskStatusService
from avocado.core.plugin_interfaces import JobPost
from avocado.core.utils import messages
from avocado_spawner_remote import RemoteSpawner

LOG = logging.getLogger('avocado.job.' + __name__)
SLOT_WAIT_S = 0.1


class Slot:
    """One slot file's session, logged in at the first task that needs it."""

    def __init__(self, path: str):
        self.path = path
        self.session = None
        self.busy = False
        self.dead: Optional[str] = None          # why it was retired
        with open(path, encoding='utf-8') as f:
            self.login = json.load(f)
        self.host = f"{self.login.get('host')}:{self.login.get('port')}"

    def alive(self) -> bool:
        return self.session is not None and self.session.is_alive()

    def retire(self, why: str) -> None:
        self.dead = why
        LOG.error('test host %s (%s) retired: %s', self.host, self.path, why)
        self.close()

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except (ShellError, OSError):
                pass
            self.session = None


class FleetSpawner(RemoteSpawner):

    description = "Remote spawner, bounded: a test host lost mid-test ends its test as an ERROR"
    slots: Dict[str, Slot] = {}

    def _slots(self):
        if not FleetSpawner.slots:
            for path in self.config.get('spawner.remote.slots'):
                if path:
                    FleetSpawner.slots[path] = Slot(path)
        return list(FleetSpawner.slots.values())

    async def _log_in(self, slot: Slot) -> None:
        loop = asyncio.get_event_loop()
        try:
            slot.session = await loop.run_in_executor(None, lambda: remote.remote_login(
                **slot.login))
        except Exception as err:  # aexpect raises many kinds; each means no host
            slot.retire(f'login failed: {type(err).__name__}: {err}')

    async def _reserve(self, deadline: float) -> Optional[Slot]:
        """A free slot whose host is up, waiting while all are busy (the
        job runs at most one task per slot, so for at most a test's time,
        and never past ``deadline``); None once every slot is retired."""
        while True:
            live = [s for s in self._slots() if not s.dead]
            if not live or time.monotonic() > deadline:
                return None
            for slot in live:
                if not slot.busy:
                    slot.busy = True
                    if slot.session is None:
                        await self._log_in(slot)
                        if slot.dead:
                            slot.busy = False
                            break
                    return slot
            else:
                await asyncio.sleep(SLOT_WAIT_S)

    @staticmethod
    def _post(runtime_task, message) -> None:
        for uri in {service.uri for service in runtime_task.task.status_services}:
            service = TaskStatusService(uri)
            try:
                service.post(message)
            finally:
                service.close()

    def _end_as_error(self, runtime_task, reason: str) -> None:
        """The test ends as an ERROR with ``reason``, posted as its runner
        would have posted it (Avocado fills in what a test that never
        started lacks)."""
        task = runtime_task.task
        self._post(runtime_task, messages.FinishedMessage.get(
            'error', reason, time=time.monotonic(), id=str(task.identifier),
            job_id=task.job_id))

    async def _run(self, slot: Slot, runtime_task, command: str, timeout: float,
                   what: str) -> bool:
        """Run one step of a task in its slot; False, with the test ended
        as an ERROR, when the host was lost or the step failed."""
        started_at = time.monotonic()
        status, output = await self.run_remote_cmd_async(slot.session, command, timeout)
        if not slot.alive():
            slot.retire(f'its SSH session ended {time.monotonic() - started_at:.1f} s '
                        f'into {what} of {runtime_task.task.identifier}')
            self._end_as_error(runtime_task, f'test host {slot.host} lost during {what}: '
                                             f'{output}')
            return False
        if status != 0:
            # A runner posts its test's end before it exits: one that exits
            # non-zero crashed (or never started) and posted nothing.
            self._end_as_error(runtime_task, f'{what} on test host {slot.host} exited '
                                             f'{status}: {output.strip()[-400:]}')
            return False
        return True

    async def spawn_task(self, runtime_task):
        self.create_task_output_dir(runtime_task)
        test_timeout = float(self.config.get('spawner.remote.test_timeout'))
        slot = await self._reserve(time.monotonic() + test_timeout)
        if slot is None:
            why = '; '.join(sorted({s.dead for s in self._slots() if s.dead})) or \
                f'every slot stayed busy for {test_timeout:.0f} s'
            self._end_as_error(runtime_task, f'no test host left to run on ({why})')
            return True
        runtime_task.spawner_handle = slot.session
        task = runtime_task.task
        LOG.info('%s on %s', task.identifier, slot.host)
        try:
            hook = self.config.get('spawner.remote.setup_hook')
            if hook and not await self._run(
                    slot, runtime_task, hook,
                    float(self.config.get('spawner.remote.setup_timeout')), 'the setup hook'):
                return True
            runner = ['python3', '-m', task.runnable.pick_runner_module_from_entry_point_kind(
                task.runnable.kind), 'task-run', *task.get_command_args()]
            await self._run(slot, runtime_task, shlex.join(runner) + ' > /dev/null',
                            test_timeout, 'the test')
        finally:
            slot.busy = False
        return True

    @staticmethod
    def is_task_alive(runtime_task):
        return False            # spawn_task returned: its runner has ended

    async def wait_task(self, runtime_task):
        return

    async def terminate_task(self, runtime_task):
        return True

    @classmethod
    def close_all(cls) -> None:
        for slot in cls.slots.values():
            slot.close()
        cls.slots.clear()


class FleetSessions(JobPost):
    """Closes the fleet's SSH sessions (and their aexpect helpers) when the
    job ends, whatever the spawner."""

    name = 'mpqemu-fleet-sessions'
    description = "Closes the SSH sessions of the suite's fleet spawner when the job ends"

    def post(self, job):
        FleetSpawner.close_all()
