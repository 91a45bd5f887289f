"""The agent tier: a bare-metal guest (tests/images/agent) that executes the
harness's device accesses from a mailbox in guest RAM and takes the device's
interrupts, on a real vCPU of the proxy.

It runs without paging, so the same binary runs under TCG, under KVM on
VMX/SVM hosts and under the PVM flavour of KVM (whose instruction emulator
runs only unpaged guests): the one tier that exercises the proxy's
KVM-only interrupt path (irqfd, resample) on every host with a /dev/kvm.

build.py    compile the agent (cached by content and compiler)
mailbox.py  the mailbox layout, mirroring tests/images/agent/mailbox.h
client.py   post command batches and read their results, with deadlines
access.py   AgentAccess (harness.devices.pci.DeviceAccess) and its IrqLine
session.py  what a topology needs to boot the agent, and waiting for it
"""
