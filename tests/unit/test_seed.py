"""harness/qemu/seed.py: a seed's tree is its base with the series applied
(the parts it leaves out left out) and then its port; the cache key moves
with every patch byte; a patch that does not apply names itself.  On a
small tree of its own; the real series on the real 5.2 source is the
build test's (tests/functional/test_build.py with qemu_src=seed:v8)."""

import os

import pytest

from harness.qemu import seed, source
from harness.qemu.buildcache import BuildError

SERIES = """From the series: touches a.c and a Makefile.objs
diff --git a/a.c b/a.c
--- a/a.c
+++ b/a.c
@@ -1,2 +1,2 @@
 int a;
-int b;
+int b = 1;
diff --git a/hw/Makefile.objs b/hw/Makefile.objs
--- a/hw/Makefile.objs
+++ b/hw/Makefile.objs
@@ -1 +1,2 @@
 obj-y += a.o
+obj-$(CONFIG_MPQEMU) += b.o
"""
PORT = """The port: why it exists, then the diff.
diff --git a/hw/meson.build b/hw/meson.build
--- a/hw/meson.build
+++ b/hw/meson.build
@@ -1 +1,2 @@
 files('a.c')
+files('b.c')
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A seed of one series patch and one port patch over a tree of three files."""
    monkeypatch.setenv('MPQEMU_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(seed, 'SEEDS_DIR', str(tmp_path / 'seeds'))
    for part, text in (('series', SERIES), ('port', PORT)):
        os.makedirs(tmp_path / 'seeds' / 'tiny' / part)
        (tmp_path / 'seeds' / 'tiny' / part / '01-x.patch').write_text(text)
    base = tmp_path / 'base' / 'qemu-1.0'
    os.makedirs(base / 'hw')
    (base / 'a.c').write_text('int a;\nint b;\n')
    (base / 'hw' / 'Makefile.objs').write_text('obj-y += a.o\n')
    (base / 'hw' / 'meson.build').write_text("files('a.c')\n")
    return seed.Seed('tiny', 'bullseye', r'(^|/)Makefile\.objs$'), str(base), tmp_path


def test_the_series_then_the_port_with_the_left_out_files_untouched(tiny):
    recipe, base, _ = tiny
    tree = seed.patched_tree(recipe, base, '1:1.0-1', log=lambda message: None)
    assert open(os.path.join(tree, 'a.c')).read() == 'int a;\nint b = 1;\n'
    assert open(os.path.join(tree, 'hw', 'Makefile.objs')).read() == 'obj-y += a.o\n'
    assert open(os.path.join(tree, 'hw', 'meson.build')).read() == "files('a.c')\nfiles('b.c')\n"
    assert open(os.path.join(base, 'a.c')).read() == 'int a;\nint b;\n', 'the base was patched'
    record = open(os.path.join(os.path.dirname(tree), '.patched')).read()
    assert 'left out 01-x.patch: hw/Makefile.objs' in record
    # Made once: asking again finds it.
    assert seed.patched_tree(recipe, base, '1:1.0-1', log=pytest.fail) == tree


def test_the_key_moves_with_every_patch_byte(tiny):
    recipe, _, tmp_path = tiny
    before = recipe.fingerprint('1:1.0-1')
    assert before.startswith('seed:tiny:1:1.0-1:')
    assert recipe.fingerprint('1:1.0-2') != before
    port = tmp_path / 'seeds' / 'tiny' / 'port' / '01-x.patch'
    port.write_text(PORT.replace('why it exists', 'why it exists.'))
    assert recipe.fingerprint('1:1.0-1') != before


def test_a_patch_that_does_not_apply_names_itself(tiny):
    recipe, base, tmp_path = tiny
    (tmp_path / 'seeds' / 'tiny' / 'port' / '01-x.patch').write_text(
        PORT.replace(" files('a.c')\n+", "-files('c.c')\n+").replace('-1 +1,2', '-1 +1'))
    with pytest.raises(BuildError, match='port 01-x.patch does not apply'):
        seed.patched_tree(recipe, base, '1:1.0-1', log=lambda message: None)


def test_seed_specs():
    assert str(source.parse_spec('seed:v8')) == 'seed:v8'
    with pytest.raises(BuildError, match='no such seed; known: seed:v8'):
        source.parse_spec('seed:v9')
    v8 = seed.by_name('v8')
    assert [os.path.basename(p)[:3] for p in v8.patches('series')] == \
        [f'{n:02d}-' for n in range(1, 21)]
    assert v8.patches('port'), 'the v8 port has no patches'
    parts = dict(seed.split_files(open(v8.patches('series')[0]).read()))
    assert 'exec.c' in parts and 'backends/hostmem-memfd.c' in parts
