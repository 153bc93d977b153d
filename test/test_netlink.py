"""netlink.c's batched rtnetlink requests against a real kernel: a fresh
network namespace (unshare -rn), so nothing on the host changes.  Skipped
when unprivileged user namespaces or musl-gcc are not available."""
import errno
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    cc = os.environ.get("MUSL_CC", "musl-gcc")
    if not shutil.which(cc) or not shutil.which("unshare"):
        pytest.skip("needs %s and unshare" % cc)
    out = str(tmp_path_factory.mktemp("netlink") / "netlink_batch")
    subprocess.run([cc, "-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                    "-I", ROOT, "-static", "-o", out,
                    os.path.join(ROOT, "test", "netlink_batch.c"),
                    os.path.join(ROOT, "netlink.c")], check=True)
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no user+network namespaces: %s" % probe.stderr.decode().strip())
    return out


def test_batch_gives_each_request_its_own_verdict(driver):
    r = subprocess.run(["unshare", "-rn", driver],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "addrs 0: %d 0 %d 0" % (-errno.EEXIST, -errno.EEXIST), r.stdout
    assert lines[1] == "routes 0: %d 0" % -errno.ENETUNREACH, r.stdout
    assert lines[2] == "too many %d" % -errno.ENOBUFS, r.stdout
    assert lines[3] == "empty 0", r.stdout
