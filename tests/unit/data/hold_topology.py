"""Start a topology, print its pids as JSON, then wait to be killed.

Run by test_teardown.py, which SIGKILLs this process: no cleanup code of
ours runs, so only the kernel (PR_SET_PDEATHSIG) can stop the QEMUs.
"""

import json
import sys
import time

from harness.base import params
from harness.mpqemu.topology import Machine
from harness.qemu import binary

HOLD_S = 60

vm = Machine(binary.probe(params.get('qemu_bin')), sys.argv[1])
vm.add_lsi('lsi1', sys.argv[2])
vm.launch()
print(json.dumps([p.pid for p in vm.processes()]), flush=True)
time.sleep(HOLD_S)   # the test kills us long before this ends
