"""The harness's packages are layers: each imports only from below.

Lowest first; a module may import modules of its own layer or of a layer
below it, never above, and the import graph has no cycle.  Every import
counts, including those inside functions.  README.md's module table shows
the same order.
"""

import ast
import os

from harness.base import paths

LAYERS = (
    ('harness.base',),                       # leaves: errors, paths, waits, /proc, host tools
    ('harness.images',),                     # guest images and the agent's ELF, built
    ('harness.qemu',),                       # one QEMU process: binary, build, QMP, qtest
    ('harness.devices',),                    # PCI and the LSI 53C895A, through any access
    ('harness.fuzz',),                       # the fuzzer both wire protocols share
    ('harness.mpqemu', 'harness.vfio_user'),  # remotes, the machine, both wire protocols
    ('harness.guest',),                      # a running Linux guest: console, SSH, IO
    ('harness.agent',),                      # a running bare-metal agent guest
    ('harness.testing',),                    # the Avocado test base
    ('harness.report', 'harness.fleet'),     # a job's results read back; test hosts
    ('harness.tools',),                      # command-line programs
)
MAX_MODULE_LINES = 600
HARNESS_DIR = os.path.join(paths.REPO_DIR, 'harness')


def modules():
    """{module name: path} of every module under harness/."""
    found = {}
    for root, _, files in os.walk(HARNESS_DIR):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(root, name)
                module = os.path.relpath(path, paths.REPO_DIR)[:-3].replace(os.sep, '.')
                found[module.removesuffix('.__init__')] = path
    return found


def imports(module, path, known):
    """The harness modules that ``module`` imports."""
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            for alias in node.names:
                name = f'{source}.{alias.name}'
                if name in known:
                    found.add(name)
                elif source in known:
                    found.add(source)
    found.discard(module)
    return found


def layer_of(module):
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + '.') for p in prefixes):
            return rank
    return None


def graph():
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_every_module_is_in_a_layer():
    stray = sorted(m for m in modules() if m != 'harness' and layer_of(m) is None)
    assert not stray, f'modules outside the layers of {__file__}: {stray}'


def test_no_module_imports_from_a_higher_layer():
    upward = sorted(f'{m} -> {d}' for m, deps in graph().items() for d in deps
                    if layer_of(m) is not None and layer_of(d) is not None
                    and layer_of(d) > layer_of(m))
    assert not upward, 'imports from a higher layer:\n' + '\n'.join(upward)


def test_no_import_cycle():
    deps = graph()
    done, cycles = set(), []

    def visit(module, stack):
        if module in stack:
            cycles.append(' -> '.join(stack[stack.index(module):] + [module]))
            return
        if module in done:
            return
        for dep in sorted(deps.get(module, ())):
            visit(dep, stack + [module])
        done.add(module)

    for module in sorted(deps):
        visit(module, [])
    assert not cycles, 'import cycles:\n' + '\n'.join(cycles)


def test_no_module_is_too_long_to_read():
    long = sorted(f'{os.path.relpath(p, paths.REPO_DIR)}: {n} lines'
                  for p in modules().values()
                  for n in [sum(1 for _ in open(p, encoding='utf-8'))] if n > MAX_MODULE_LINES)
    assert not long, f'modules over {MAX_MODULE_LINES} lines (split them along their seams): {long}'


def test_the_checks_see_a_violation():
    """The graph is read right: a known upward import would be caught."""
    deps = graph()
    assert 'harness.base.errors' in deps['harness.mpqemu.topology']
    assert layer_of('harness.tools.bench') > layer_of('harness.devices.pci')
