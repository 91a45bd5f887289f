"""harness/qemu/ source builds without compiling QEMU: spec parsing, option
detection from configure --help, cache keys, fingerprints, and the errors a
tree without multi-process support gets (a fake tree whose configure is a
shell script)."""

import json
import os
import stat
import subprocess
import textwrap

import pytest

from harness.qemu import build, buildcache, configure, source

# The shape of a meson-era configure --help (QEMU 7.2 and later).
MESON_HELP = textwrap.dedent("""\
    Usage: configure [options]
    Options: [defaults in brackets after descriptions]

    Standard options:
      --help                   print this message
      --without-default-features default all --enable-* options to "disabled"
      --disable-werror         disable compilation abort on warning

    Optional features, enabled with --enable-FEATURE and
    disabled with --disable-FEATURE, default is enabled if available
    (unless built with --without-default-features):

      alsa            ALSA sound support
      docs            Documentations build support
      kvm             KVM acceleration support
      multiprocess    Out of process device emulation support
      slirp           libslirp user mode network backend support
      tcg             TCG support
      safe-stack      SafeStack Stack Smash Protection. Depends on
                      clang/llvm >= 3.7 and requires coroutine backend ucontext.

    NOTE: The object files are built at the place where configure is launched
    """)
# A tree carrying the v8 patch series: shell-era configure, literal options.
V8_HELP = textwrap.dedent("""\
    Usage: configure [options]
      --enable-mpqemu          enable multi-process QEMU
      --disable-mpqemu         disable multi-process QEMU
      --disable-gtk            disable gtk UI
      --disable-werror         disable compilation abort on warning
      --enable-kvm             enable KVM acceleration support
      --disable-docs           disable documentation build
      --disable-slirp          disable SLIRP userspace network connectivity
    """)
NO_MULTIPROCESS_HELP = MESON_HELP.replace(
    '  multiprocess    Out of process device emulation support\n', '')


def fake_tree(tmp_path, help_text, meson_version="'>=0.61.3'"):
    """A fake QEMU tree: a configure script that prints ``help_text`` and a
    meson.build asking for ``meson_version``."""
    tree = tmp_path / 'fake-qemu'
    tree.mkdir()
    script = tree / 'configure'
    script.write_text("#!/bin/sh\ncat <<'HELP'\n" + help_text + "HELP\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tree / 'meson.build').write_text(
        f"project('qemu', ['c'], meson_version: {meson_version},\n"
        "        default_options: ['warning_level=1'])\n")
    return tree


def test_multiprocess_option_upstream_and_v8():
    assert configure.multiprocess_option(MESON_HELP) == '--enable-multiprocess'
    assert configure.multiprocess_option(V8_HELP) == '--enable-mpqemu'


def test_no_multiprocess_support_is_a_clear_error():
    with pytest.raises(buildcache.BuildError,
                       match=r'fake-tree has no multi-process support.*--enable-multiprocess'
                             r'.*--enable-mpqemu'):
        configure.multiprocess_option(NO_MULTIPROCESS_HELP, 'fake-tree')


def test_meson_era_args_disable_default_features_and_keep_the_needed_ones():
    args = configure.configure_args(MESON_HELP)
    assert args[:3] == ['--target-list=x86_64-softmmu', '--enable-multiprocess',
                        '--without-default-features']
    for needed in ('--enable-kvm', '--enable-tcg', '--enable-slirp', '--disable-werror',
                   '--disable-docs'):
        assert needed in args
    assert not any('alsa' in a for a in args)


def test_old_configure_gets_only_the_disables_it_knows():
    args = configure.configure_args(V8_HELP, extra=['--enable-debug'])
    assert '--enable-mpqemu' in args
    assert '--disable-gtk' in args and '--disable-docs' in args
    assert '--without-default-features' not in args
    assert '--disable-sdl' not in args           # this configure does not know it
    # 5.2 documents only --disable-slirp; its --enable-slirp wants =git|system
    # and plain --enable-slirp is "unknown option" (auto finds libslirp).
    assert '--enable-kvm' in args and '--enable-slirp' not in args
    assert args[-1] == '--enable-debug'


def test_features_parse_multiline_descriptions():
    features, options = configure.configure_features(MESON_HELP)
    assert {'alsa', 'kvm', 'multiprocess', 'safe-stack'} <= features
    assert 'clang' not in features
    assert '--without-default-features' in options


def test_spec_parsing(tmp_path):
    assert source.parse_spec('debian:bookworm') == source.SourceSpec('debian', 'bookworm')
    assert source.parse_spec('debian:trixie=1:10.0.13+ds-0+deb13u1').ref == \
        '1:10.0.13+ds-0+deb13u1'
    spec = source.parse_spec('https://gitlab.com/qemu-project/qemu.git#v9.2.0')
    assert (spec.kind, spec.location, spec.ref) == \
        ('git', 'https://gitlab.com/qemu-project/qemu.git', 'v9.2.0')
    tree = fake_tree(tmp_path, MESON_HELP)
    assert source.parse_spec(str(tree)) == source.SourceSpec('local', str(tree))


@pytest.mark.parametrize('text, message', [
    ('debian:sid', "suite 'sid' is not one"),
    ('', 'qemu_src is empty'),
    ('/nonexistent/qemu', 'is not a directory, a git URL'),
])
def test_bad_specs_say_what_is_accepted(text, message):
    with pytest.raises(buildcache.BuildError, match=message):
        source.parse_spec(text)


def test_directory_without_configure_is_not_a_qemu_tree(tmp_path):
    with pytest.raises(buildcache.BuildError, match='no configure script'):
        source.parse_spec(str(tmp_path))


def test_cache_key_depends_on_fingerprint_and_options_only():
    key = build.cache_key('debian:1:7.2+dfsg-7+deb12u18')
    assert key == build.cache_key('debian:1:7.2+dfsg-7+deb12u18')
    assert key != build.cache_key('debian:1:7.2+dfsg-7+deb12u15')
    assert key != build.cache_key('debian:1:7.2+dfsg-7+deb12u18', ['--enable-debug'])
    assert len(key) == 16


def test_tree_fingerprint_changes_with_content(tmp_path):
    tree = fake_tree(tmp_path, MESON_HELP)
    before = source.tree_fingerprint(str(tree))
    assert before == source.tree_fingerprint(str(tree))
    (tree / 'build').mkdir()                     # an in-tree build dir is ignored
    (tree / 'build' / 'x.o').write_bytes(b'obj')
    assert before == source.tree_fingerprint(str(tree))
    (tree / 'hw.c').write_text('int x;\n')
    assert before != source.tree_fingerprint(str(tree))


def test_required_meson_from_meson_build(tmp_path):
    assert configure.required_meson(str(fake_tree(tmp_path, MESON_HELP, "'>=1.5.0'"))) == (1, 5, 0)


def test_building_a_tree_without_multiprocess_fails_before_compiling(tmp_path, monkeypatch):
    monkeypatch.setenv('MPQEMU_BUILD_DIR', str(tmp_path / 'out'))
    tree = fake_tree(tmp_path, NO_MULTIPROCESS_HELP)
    with pytest.raises(buildcache.BuildError, match='has no multi-process support'):
        build.build(str(tree), log=lambda message: None)
    # Nothing claims to be a finished build.
    assert not any(name == 'result.json' for _, _, files in os.walk(tmp_path / 'out')
                   for name in files)


def test_madison_parsing_keeps_the_suite_and_its_updates():
    text = textwrap.dedent("""\
          qemu | 1:7.2+dfsg-7+deb12u18 | http://deb.debian.org/debian-security bookworm-security/main Sources
          qemu | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian bookworm/main Sources
          qemu | 1:10.0.13+ds-0+deb13u1 | http://deb.debian.org/debian trixie/main Sources
          qemu | 1:8.2+dfsg-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main Sources
        qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
        """)
    assert source.parse_madison(text, 'bookworm') == ['1:7.2+dfsg-7+deb12u18',
                                                      '1:7.2+dfsg-7+deb12u15']
    assert source.parse_madison(text, 'trixie') == ['1:10.0.13+ds-0+deb13u1']


def test_apt_state_moves_with_the_sources_and_indexes(tmp_path):
    lists = tmp_path / 'lists'
    lists.mkdir()
    (lists / 'a_Sources').write_text('one')
    before = source.apt_state([str(tmp_path / 'sources.list'), str(lists)])
    assert source.apt_state([str(tmp_path / 'sources.list'), str(lists)]) == before
    (lists / 'a_Sources').write_text('a longer index')
    changed = source.apt_state([str(tmp_path / 'sources.list'), str(lists)])
    assert changed != before
    (tmp_path / 'sources.list').write_text('deb-src http://deb.debian.org/debian trixie main\n')
    assert source.apt_state([str(tmp_path / 'sources.list'), str(lists)]) != changed


def test_madison_is_answered_from_its_memo_until_apt_changes(tmp_path):
    memo = tmp_path / 'madison.json'
    fresh = source.madison(str(memo))          # no memo yet: apt-cache answers
    assert fresh == subprocess.run(['apt-cache', 'madison', 'qemu'], check=True,
                                   capture_output=True, text=True).stdout
    assert json.loads(memo.read_text())['apt_state'] == source.apt_state()
    # A memo of today's apt state is the answer, whatever it says ...
    memo.write_text(json.dumps({'apt_state': source.apt_state(), 'output': 'memo'}))
    assert source.madison(str(memo)) == 'memo'
    # ... one of another state, or a damaged one, is asked again.
    memo.write_text(json.dumps({'apt_state': 'before apt-get update', 'output': 'memo'}))
    assert source.madison(str(memo)) == fresh
    memo.write_text('{"apt_state": ')
    assert source.madison(str(memo)) == fresh


def test_python_args_follow_the_configure_generation(tmp_path):
    tree = fake_tree(tmp_path, MESON_HELP)
    assert configure.python_args(str(tree), configure.SYSTEM_PYTHON) == []
    assert configure.python_args(str(tree), '/x/venv/bin/python3') == ['--meson=/x/venv/bin/meson']
    (tree / 'configure').write_text('#!/bin/sh\n# python/scripts/mkvenv.py\n')
    assert configure.python_args(str(tree), '/x/venv/bin/python3') == \
        ['--python=/x/venv/bin/python3']


def test_a_cached_build_is_returned_without_configuring(tmp_path, monkeypatch):
    """A result.json under the key of (fingerprint, options) is the whole
    answer: configure (which would fail here) is never run."""
    monkeypatch.setenv('MPQEMU_BUILD_DIR', str(tmp_path / 'out'))
    tree = fake_tree(tmp_path, NO_MULTIPROCESS_HELP)
    key = build.cache_key(source.tree_fingerprint(str(tree)))
    key_dir = tmp_path / 'out' / 'qemu' / key
    key_dir.mkdir(parents=True)
    fake_binary = tmp_path / 'qemu-system-x86_64'
    fake_binary.write_text('#!/bin/sh\n')
    fake_binary.chmod(0o755)
    (key_dir / 'result.json').write_text(json.dumps(dict(
        spec=str(tree), key=key, binary=str(fake_binary), version='QEMU emulator version 9.9.9',
        fingerprint='x', configure_args=[], build_log='', build_s=1.0, firmware_dirs=[],
        has_qtest=True, multiprocess_option='--enable-multiprocess')))
    result = build.build(str(tree), log=lambda message: None)
    assert result.cached and result.binary == str(fake_binary)
    assert build.cached_result(str(tree)).binary == str(fake_binary)
    # Other options are another key: not cached.
    assert build.cached_result(str(tree), ['--enable-debug']) is None


def _cached_entry(tmp_path, monkeypatch, binary_bytes):
    """A fake tree and, under its key, what a build leaves: build/,
    request.json, and (binary_bytes not None) result.json naming a binary."""
    monkeypatch.setenv('MPQEMU_BUILD_DIR', str(tmp_path / 'out'))
    tree = fake_tree(tmp_path, NO_MULTIPROCESS_HELP)
    key = build.cache_key(source.tree_fingerprint(str(tree)))
    key_dir = tmp_path / 'out' / 'qemu' / key
    (key_dir / 'build').mkdir(parents=True)
    (key_dir / 'request.json').write_text('{}')
    binary = key_dir / 'build' / 'qemu-system-x86_64'
    binary.write_text('#!/bin/sh\n' + '#' * 100)
    binary.chmod(0o755)
    if binary_bytes is not None:
        (key_dir / 'result.json').write_text(json.dumps(dict(
            spec=str(tree), key=key, binary=str(binary), version='QEMU emulator version 9.9.9',
            fingerprint='x', configure_args=[], build_log='', build_s=1.0, firmware_dirs=[],
            has_qtest=True, multiprocess_option='--enable-multiprocess',
            binary_bytes=binary_bytes)))
    return tree, binary


def test_a_build_killed_before_its_result_is_built_again_not_used(tmp_path, monkeypatch):
    """A killed build leaves its key directory (build/, the binary maybe
    half-linked) but no result.json: nothing is served from it, the build
    runs again (and here fails at configure, as the fake tree must)."""
    tree, _ = _cached_entry(tmp_path, monkeypatch, binary_bytes=None)
    assert build.cached_result(str(tree)) is None
    with pytest.raises(buildcache.BuildError, match='multiprocess'):
        build.build(str(tree), log=lambda message: None)


def test_a_truncated_binary_is_built_again_not_used(tmp_path, monkeypatch):
    tree, binary = _cached_entry(tmp_path, monkeypatch, binary_bytes=0)
    size = os.path.getsize(binary)
    assert build.cached_result(str(tree)).binary == str(binary)    # size not recorded: kept
    (tmp_path / 'again').mkdir()
    tree, binary = _cached_entry(tmp_path / 'again', monkeypatch, binary_bytes=size)
    assert build.cached_result(str(tree)).binary_bytes == size
    with open(binary, 'r+b') as f:
        f.truncate(size // 2)                                     # what a full disk leaves
    assert build.cached_result(str(tree)) is None
    with pytest.raises(buildcache.BuildError, match='multiprocess'):
        build.build(str(tree), log=lambda message: None)
