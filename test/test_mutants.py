"""tools/mutants itself (`make mutants`): a mutant its tests catch is reported
killed, one they miss is reported SURVIVED and fails the run, a test that
does not exist is an error, and a mutant whose search text no longer matches
fails the run before anything is built.  (The run with every mutant killed,
exit status 0, is `make mutants` itself.)"""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "mutants")

EXIT_CODE_7_BITS = """file: session.c
- m.u.exec_exited.code = WEXITSTATUS(status);
+ 		m.u.exec_exited.code = WEXITSTATUS(status) & 0x7f;
"""


def mutants(tmp_path, text, *args):
    lst = tmp_path / "mutants.txt"
    lst.write_text(text)
    return subprocess.run([TOOL, "--list", str(lst), "--timeout", "120"] + list(args),
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_killed_survived_and_unknown_test_are_told_apart(tmp_path):
    """One run, three copies of one bug: named with the test that catches it,
    with a test that cannot see it, and with a test that does not exist (a
    renamed test must not make its mutant look killed)."""
    r = mutants(tmp_path, "mutant: probe-caught\nwhat: exit code truncated\n" + EXIT_CODE_7_BITS +
                "test: test/test_exec.py::test_exit_codes\n\n"
                "mutant: probe-missed\nwhat: the same bug, tests that cannot see it\n" +
                EXIT_CODE_7_BITS + "test: test/test_agent.py::test_help_and_bad_options\n\n"
                "mutant: probe-renamed\nwhat: the same bug, a test that is gone\n" +
                EXIT_CODE_7_BITS + "test: test/test_exec.py::test_no_such_test\n",
                "--no-baseline")
    lines = r.stdout.splitlines()
    assert r.returncode == 1, r

    def line(name):
        found = [x for x in lines if " %s " % name in x]
        assert len(found) == 1, (name, r.stdout)
        return found[0]
    assert line("probe-caught").startswith("killed "), r.stdout
    assert "test_exit_codes[" in line("probe-caught"), r.stdout
    assert line("probe-missed").startswith("SURVIVED "), r.stdout
    assert line("probe-renamed").startswith("ERROR "), r.stdout
    assert "mutants: 1 killed, 1 survived, 1 errors of 3" in lines[-1], r.stdout
    assert lines[-1].endswith("FAILED"), r.stdout


def test_stale_mutant_fails_before_building(tmp_path):
    r = mutants(tmp_path, "mutant: probe-stale\nwhat: code that changed\nfile: session.c\n"
                "- this text is in no source file\n+ x\n"
                "test: test/test_exec.py::test_exit_codes\n")
    assert r.returncode == 1, r
    assert "probe-stale" in r.stderr and "not found (stale mutant?)" in r.stderr, r
    assert "killed" not in r.stdout and "SURVIVED" not in r.stdout, r


def test_the_list_parses_and_applies():
    """Every mutant of test/mutants.txt still matches the sources exactly once
    (the check `make mutants` makes before building anything)."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("mutants_tool", TOOL)
    spec = importlib.util.spec_from_loader("mutants_tool", loader)
    tool = importlib.util.module_from_spec(spec)
    loader.exec_module(tool)
    ms = tool.parse_list(os.path.join(ROOT, "test", "mutants.txt"))
    assert len(ms) >= 11
    for m in ms:
        for path, search, _ in m.edits:
            with open(os.path.join(ROOT, path)) as f:
                hits = tool.search_regex(search).findall(f.read())
            assert len(hits) == 1, (m.name, path, search)
