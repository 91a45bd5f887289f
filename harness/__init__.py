"""Functional test harness for multi-process QEMU (x-remote + x-pci-proxy-dev)."""
