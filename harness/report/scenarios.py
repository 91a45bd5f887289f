"""Which scenario a functional test tells, and over which transport.

The matrix (harness/tools/matrix.py) shows each test as one scenario under
one transport.  Both come from the test itself, not from a list kept here:

- the *transport* from its Avocado tags, which ``results.json`` carries for
  every test and ``avocado list`` selects on: ``vfio-user`` for a class
  whose ``placement`` is ``topology.VFIO_USER`` (a ``vfio-user-pci`` client,
  an ``x-vfio-user-server`` remote), ``control`` for ``topology.IN_PROCESS``
  (the LSI inside the guest's QEMU, the control), otherwise ``proxy``
  (``x-pci-proxy-dev`` and a remote on the mpqemu socket: the placement
  harness/testing.py gives by default).  tests/unit/test_matrix.py checks
  that every functional test's tags and placement agree.
- the *scenario* from its class's family in the test module: the topmost
  class there, along the test class's bases, that defines the method.
  ``TopologyOverVfioUser`` inherits ``test_two_remotes_one_proxy`` from
  ``Topology``, so both tell ``test_topology:Topology.test_two_remotes_one_proxy``;
  a twin that overrides the method still tells its parent's story.  Read
  with ``ast``, so a test that never ran (skipped before its job) has one.
"""

import ast
import functools
import os
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

from ..base import paths
from ..mpqemu.topology import IN_PROCESS, PROXY, VFIO_USER

# The tag that marks each placement other than the default (tests/functional).
VFIO_USER_TAG = 'vfio-user'
CONTROL_TAG = 'control'
# The order of a scenario's rows.
TRANSPORTS = (PROXY, VFIO_USER, IN_PROCESS)


def transport(tags: Optional[Mapping]) -> str:
    """The transport of a test with these Avocado tags (results.json's
    ``tags``: a tag's name → its values)."""
    tags = tags or {}
    if VFIO_USER_TAG in tags:
        return VFIO_USER
    if CONTROL_TAG in tags:
        return IN_PROCESS
    return PROXY


@functools.lru_cache(maxsize=None)
def _classes(path: str) -> Dict[str, Tuple[Tuple[str, ...], FrozenSet[str]]]:
    """{class: (its bases' names, the methods it defines)} of a module."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = tuple(b.id if isinstance(b, ast.Name) else getattr(b, 'attr', '')
                          for b in node.bases)
            methods = frozenset(n.name for n in node.body
                                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
            found[node.name] = (bases, methods)
    return found


def defining_root(classes: Mapping, cls: str, method: str) -> str:
    """The topmost of ``cls`` and its bases in ``classes`` that defines
    ``method`` (``cls`` itself if none of them does)."""
    root, todo, seen = cls, [cls], set()
    while todo:
        name = todo.pop(0)
        if name in seen or name not in classes:
            continue
        seen.add(name)
        bases, methods = classes[name]
        if method in methods:
            root = name
        todo.extend(bases)
    return root


def split_name(name: str) -> Tuple[str, str, str]:
    """``tests/functional/test_x.py:Class.test_y`` → (path, class, method)."""
    path, _, rest = name.partition(':')
    cls, _, method = rest.partition('.')
    return path, cls, method


def scenario(name: str, repo_dir: str = paths.REPO_DIR) -> str:
    """``tests/functional/test_x.py:Twin.test_y`` → ``test_x:Root.test_y``
    (Root: where the family defines test_y); a name that is not a test's
    (a column's ``(prepare)``) stays as it is."""
    path, cls, method = split_name(name)
    if not method:
        return name
    module = os.path.splitext(os.path.basename(path))[0]
    try:
        classes = _classes(os.path.join(repo_dir, path))
    except (OSError, SyntaxError):
        classes = {}
    return f'{module}:{defining_root(classes, cls, method)}.{method}'
