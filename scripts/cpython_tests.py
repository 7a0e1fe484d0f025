#!/usr/bin/env python3
"""CPython's own regression tests, on the host and inside `sandbox run`; the driver of scripts/cpython-tests.sh.

Each module runs in its own `python3 -m test -v` (one process per module) first on the host, as the caller,
then inside `sandbox run` in each selected configuration:

  host       on the host, as the caller (the baseline)
  ns-root    namespace backend, `sandbox run` called by root
  ns-unpriv  namespace backend, `sandbox run` called by uid/gid 65534 (setpriv, the binary staged in a
             directory that user can enter); when the caller is not root, the caller itself
  vm-qemu    VM backend, QEMU engine (needs SANDBOX_KERNEL and SANDBOX_AGENT)

and prints a table module x configuration with pass/fail and the failing tests. The exit code is 1 when a
module fails inside a sandbox while it passes on the host, or when a module that fails on the host has a
failing test inside that does not fail on the host (either way less the failures listed in EXPECTED below,
each a limit of user namespaces, with its reason); 0 otherwise; 2 for bad usage or a missing prerequisite.

Usage: see `scripts/cpython-tests.sh --help`.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

# The modules of the issue. All of them run on the host and on the namespace backend by default: each
# configuration takes under 3 minutes here (host 130-170 s, test_signal 50 s and test_subprocess 35-55 s of
# it). Under TCG the VM runs them 3 to 55 times slower (test_os 128 s, 434 s once its sendfile tests get
# loopback TCP; test_posix 88-146 s; test_subprocess 11 minutes and more, its two test_leaking_fds_on_error
# 80 s each; test_socket 108 s with loopback TCP; test_shutil 40-45 s; test_tempfile 83 s; test_signal 177 s;
# test_select 19-42 s), so by default the VM runs VM_CI, three modules that still exercise its own layers (the
# guest kernel's system calls, its /tmp, processes and pipes), about 1 minute since the VM stdout fix of 2026-12-04; --full runs
# every module there too (about 10 minutes).
FULL = [
    "test_os",
    "test_posix",
    "test_subprocess",
    "test_socket",
    "test_shutil",
    "test_tempfile",
    "test_signal",
    "test_select",
]
VM_CI = ["test_posix", "test_shutil", "test_select"]

CONFIGS = ["host", "ns-root", "ns-unpriv", "vm-qemu"]

# Debian's interpreter and its test package (libpython3.11-testsuite): the sandbox shows /usr, not a
# python of the caller's home (pyenv and the like are invisible inside, and to uid 65534).
PYTHON = "/usr/bin/python3"
TESTS_DIR = "/usr/lib/python3.11/test"

# Every resource but the ones that send traffic off the machine (network, urlfetch), write huge files
# (largefile, extralargefile), need a display or sound (gui, audio), or only burn time (cpu); tzdata is left
# out with them (none of the modules use it). Of the modules only test_socket asks for a
# resource at all (`network`, for one test that resolves external names).
RESOURCES = "all,-network,-urlfetch,-largefile,-extralargefile,-gui,-audio,-cpu,-tzdata"

# Tests left out everywhere (host and sandboxes alike), each with its reason. regrtest's -i (ignore) takes
# glob patterns of test ids.
IGNORED = {
    "ThreadedVSOCKSocketStreamTest": "runs wherever /dev/vsock answers IOCTL_VM_SOCKETS_GET_LOCAL_CID with a "
    "CID other than 2, i.e. on any host that is itself a VM guest (this CI machine: CID 3); without a vsock "
    "loopback transport (vsock_loopback) its accept() never returns, and the regrtest --timeout then aborts the "
    "whole test_socket run. Inside a sandbox there is no /dev/vsock and it is skipped anyway.",
}

# Failures expected inside a sandbox with this policy (loopback TCP open, 65536 ids for a root caller, root's
# capabilities kept inside by --cap-add): limits of the kernel's user namespaces, not of this sandbox's layers.
# A listed test that fails is reported as "xfail" with its reason and does not fail the run; one that passes
# is reported so that the entry can go. Everything else that fails inside but passes on the host is a
# regression.
_BIG_ID = (
    "chowns to uid/gid 2**31 (the test's 'amusingly large' id, tried only as root): no id map of a "
    "sandbox reaches it (65536 ids from an unprivileged host range), so chown(2) says EINVAL, as in "
    "any rootless container"
)
_ONE_ID = (
    "an unprivileged caller without subordinate ids (uid 65534 has none in /etc/subuid here) gets one id in the "
    "sandbox's user namespace, its own as uid 0 (the verdict's not_enforced says so and how to get 65536), and "
    "setgroups(2) is denied there by the kernel"
)
_ROOT_INSIDE = {
    "test_posix": {
        "PosixTester.test_chown": _BIG_ID,
        "PosixTester.test_fchown": _BIG_ID,
        "PosixTester.test_lchown": _BIG_ID,
    },
}
EXPECTED = {
    "ns-root": _ROOT_INSIDE,
    # The guest agent runs the program with the namespace backend as guest root: the same maps as ns-root.
    "vm-qemu": _ROOT_INSIDE,
    "ns-unpriv": {
        "test_os": {"ChownFileTests.test_chown_with_root": _ONE_ID + "; chown to uid 1 gets EINVAL"},
        "test_posix": {
            "PosixTester.test_chown": _BIG_ID,
            "PosixTester.test_fchown": _BIG_ID,
            "PosixTester.test_lchown": _BIG_ID,
            "PosixGroupsTester.test_setgroups": _ONE_ID + "; setgroups gets EPERM",
            "PosixGroupsTester.test_initgroups": _ONE_ID + "; initgroups/setgroups get EPERM",
        },
        "test_subprocess": {
            "POSIXProcessTestCase.test_user": _ONE_ID + "; setreuid(65534) gets EINVAL",
            "POSIXProcessTestCase.test_group": _ONE_ID + "; setregid(65534) gets EINVAL",
        },
    },
}

# The environment of every run, on the host as inside (the sandbox starts from PATH alone).
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}

# The policy of a test-suite run: the defaults (the host system read-only, a private /tmp, no network but
# loopback, the default seccomp profile, landlock, 65536 ids where the caller can have them) plus what a test
# suite needs: room in /tmp (a writable tmpfs is bounded by the memory limit), enough processes for
# test_subprocess and test_socket's threads, a wall clock, and the capabilities of root inside the sandbox's own
# user namespace (`--cap-add all`: chown, dac_override, fowner, fsetid, kill, setgid, setuid, ...), since the
# suite runs as uid 0 there and, like on the host as root, chowns, calls setgroups and drops privileges. No
# --net host: nothing may leave the machine, and the tests need loopback only.
MEMORY = "1G"
PIDS = "512"
CAPS = "all"


def sandbox_args(backend_args, wall, report, policy=None):
    return [
        "run",
        *backend_args,
        *(["--policy", policy] if policy else []),
        "--memory",
        MEMORY,
        "--pids",
        PIDS,
        "--cap-add",
        CAPS,
        "--timeout",
        str(wall),
        "--cwd",
        "/tmp",
        *[f"--env={k}={v}" for k, v in ENV.items() if k != "PATH"],
        "--report",
        report,
        "--",
    ]


def regrtest_args(module, per_test_timeout):
    args = [PYTHON, "-m", "test", "-v", "--timeout", str(per_test_timeout), "-u", RESOURCES]
    for pattern in IGNORED:
        args += ["-i", pattern]
    return args + [module]


@dataclass
class Result:
    """One module in one configuration."""

    module: str
    config: str
    rc: int | None = None
    seconds: float = 0.0
    ran: int | None = None
    failed: list = field(default_factory=list)  # test ids (Class.method), deduplicated, in order
    skipped: dict = field(default_factory=dict)  # test id -> reason
    timeout: str | None = None  # the test regrtest's --timeout stopped in
    denied: list = field(default_factory=list)  # denied system calls from the verdict: (name, count)
    verdict: str | None = None  # the sandbox's status, when not "exited"
    log: str = ""

    @property
    def ok(self):
        return self.rc == 0

    def expected(self):
        """The failing tests this configuration expects (see EXPECTED), with their reasons."""
        table = EXPECTED.get(self.config, {}).get(self.module, {})
        return {t: table[t] for t in self.failed if t in table}

    def summary(self):
        if self.rc is None:
            return "n/a"
        if self.ok:
            return "pass"
        if self.timeout:
            return "FAIL (timeout)"
        if not self.failed:
            return f"FAIL (rc {self.rc})"
        xfail = len(self.expected())
        if xfail == len(self.failed):
            return f"xfail ({xfail})"
        return f"FAIL ({len(self.failed) - xfail}" + (f", {xfail} xfail)" if xfail else ")")


# `ERROR: test_x (test.test_os.Class.test_x)` and `ERROR: test_x (test.test_os.Class.test_x) (param=1)`,
# `ERROR: setUpClass (test.test_os.Class)`.
FAILURE = re.compile(r"^(?:FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \((\S+?)\)")
SKIP = re.compile(r"^(\S+) \((\S+?)\) \.\.\. skipped (.*)$")
RAN = re.compile(r"^Ran (\d+) tests? in ")
TIMEOUT = re.compile(r"^(\S+) \((\S+?)\) \.\.\. Timeout \(")


def short_id(name, dotted):
    """`test.test_os.Class.method` -> `Class.method`; `setUpClass (test.test_os.Class)` -> `Class.setUpClass`."""
    parts = dotted.split(".")
    if parts and parts[-1] == name:
        return ".".join(parts[2:]) if parts[:1] == ["test"] else dotted
    return ".".join(parts[2:] + [name]) if parts[:1] == ["test"] else f"{dotted}.{name}"


def parse_log(text, result):
    failed = []
    for line in text.splitlines():
        m = FAILURE.match(line)
        if m:
            tid = short_id(m.group(1), m.group(2))
            if tid not in failed:
                failed.append(tid)
            continue
        m = SKIP.match(line)
        if m:
            result.skipped[short_id(m.group(1), m.group(2))] = m.group(3).strip("'\"")
            continue
        m = RAN.match(line)
        if m:
            result.ran = int(m.group(1))
            continue
        m = TIMEOUT.match(line)
        if m:
            result.timeout = short_id(m.group(1), m.group(2))
    if result.timeout and result.timeout not in failed:
        failed.append(result.timeout)
    result.failed = failed


def parse_report(path, result):
    try:
        with open(path) as f:
            verdict = json.load(f)
    except (OSError, ValueError):
        return
    result.denied = [(d["syscall"], d["count"]) for d in verdict.get("denied_syscalls") or []]
    if verdict.get("status") not in (None, "exited"):
        result.verdict = verdict.get("status")


def run_one(module, config, argv, out_dir, env, cwd, report=None, wall=None):
    result = Result(module, config)
    log_path = os.path.join(out_dir, f"{config}.{module}.log")
    result.log = log_path
    start = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                # The sandbox has its own wall clock; this one is the backstop (and the host's only one).
                timeout=(wall or 900) + 120,
            )
            result.rc = proc.returncode
        except subprocess.TimeoutExpired:
            result.rc = 124
            result.verdict = "timed_out (harness)"
    result.seconds = time.monotonic() - start
    with open(log_path, errors="replace") as log:
        parse_log(log.read(), result)
    if report:
        parse_report(report, result)
    return result


class Harness:
    def __init__(self, opts):
        self.opts = opts
        self.out = opts.out
        self.root = os.geteuid() == 0
        self.results = {}  # (module, config) -> Result

    # --- the configurations ---------------------------------------------------------------------------------
    def host(self, module):
        cwd = tempfile.mkdtemp(prefix=f"host-{module}.", dir=self.out)
        argv = regrtest_args(module, self.opts.test_timeout)
        return run_one(module, "host", argv, self.out, dict(ENV), cwd, wall=self.opts.wall)

    def sandboxed(self, module, config):
        report = os.path.join(self.report_dir, f"{config}.{module}.json")
        if os.path.exists(report):
            os.unlink(report)
        backend = ["--backend", "namespace"]
        scale = 1
        if config == "vm-qemu":
            backend = ["--backend", "vm", "--vm-engine", "qemu", "--cpus", "2"]
            scale = self.opts.vm_scale
        wall = self.opts.wall * scale
        argv = [self.sandbox, *sandbox_args(backend, wall, report, self.opts.policy)]
        argv += regrtest_args(module, self.opts.test_timeout * scale)
        env = {"PATH": SANDBOX_PATH}
        for var in ("SANDBOX_KERNEL", "SANDBOX_AGENT", "RUST_LOG"):
            if os.environ.get(var):
                env[var] = os.environ[var]
        if config == "ns-unpriv" and self.root:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
            env["HOME"] = "/nonexistent"
        return run_one(module, config, argv, self.out, env, "/", report=report, wall=wall)

    def available(self):
        """The configurations to run, and why the others do not."""
        wanted = self.opts.configs
        skip = {}
        if not self.root and "ns-root" in wanted:
            skip["ns-root"] = "the caller is not root (ns-unpriv runs as the caller)"
        if "vm-qemu" in wanted:
            missing = [v for v in ("SANDBOX_KERNEL", "SANDBOX_AGENT") if not os.environ.get(v)]
            if missing:
                skip["vm-qemu"] = f"{' and '.join(missing)} not set"
            elif not shutil.which("qemu-system-x86_64"):
                skip["vm-qemu"] = "qemu-system-x86_64 not installed"
        return [c for c in wanted if c not in skip], skip

    def stage(self):
        """The sandbox binary where uid 65534 can run it, and a report directory it can write."""
        os.makedirs(self.out, exist_ok=True)
        os.chmod(self.out, 0o755)
        self.report_dir = os.path.join(self.out, "reports")
        os.makedirs(self.report_dir, exist_ok=True)
        self.sandbox = self.opts.sandbox
        if self.root and "ns-unpriv" in self.configs:
            stage = os.path.join(self.out, "bin")
            os.makedirs(stage, exist_ok=True)
            os.chmod(stage, 0o755)
            self.sandbox = os.path.join(stage, "sandbox")
            shutil.copy2(self.opts.sandbox, self.sandbox)
            os.chmod(self.sandbox, 0o755)
            # Writable by the unprivileged caller, which writes its own reports.
            os.chmod(self.report_dir, 0o1777)

    # --- the run --------------------------------------------------------------------------------------------
    def save(self):
        """What the logs do not hold (exit codes, times, verdicts), for --from."""
        meta = [
            {"module": r.module, "config": r.config, "rc": r.rc, "seconds": r.seconds, "verdict": r.verdict}
            for r in self.results.values()
        ]
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump({"configs": self.configs, "skipped": self.skipped_configs, "results": meta}, f, indent=1)

    def load(self):
        """The results of an earlier run in the same --out directory, parsed again (--from)."""
        with open(os.path.join(self.out, "results.json")) as f:
            saved = json.load(f)
        self.configs, self.skipped_configs = saved["configs"], saved["skipped"]
        self.report_dir = os.path.join(self.out, "reports")
        for m in saved["results"]:
            r = Result(m["module"], m["config"], rc=m["rc"], seconds=m["seconds"], verdict=m["verdict"])
            r.log = os.path.join(self.out, f"{r.config}.{r.module}.log")
            with open(r.log, errors="replace") as log:
                parse_log(log.read(), r)
            parse_report(os.path.join(self.report_dir, f"{r.config}.{r.module}.json"), r)
            if r.module in self.opts.modules:
                self.results[(r.module, r.config)] = r

    def modules(self, config):
        return self.opts.vm_modules if config == "vm-qemu" else self.opts.modules

    def run(self):
        self.configs, self.skipped_configs = self.available()
        self.stage()
        for config, why in self.skipped_configs.items():
            say(f"SKIPPED {config}: {why}")
        lock = threading.Lock()

        def one(config, module):
            say(f"{config}: {module}")
            if config == "host":
                r = self.host(module)
            else:
                r = self.sandboxed(module, config)
            with lock:
                self.results[(module, config)] = r
                self.save()
            extra = f", verdict {r.verdict}" if r.verdict else ""
            say(f"{config}: {module}: {r.summary()} in {r.seconds:.1f} s{extra} (log {r.log})")

        # --jobs runs at once (each in its own process, with its own temporary directory; many of the tests
        # sleep or wait on signals, so two at a time roughly halves the time on two cores).
        pairs = [(c, m) for c in self.configs for m in self.modules(c)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
            for f in [pool.submit(one, c, m) for c, m in pairs]:
                f.result()
        # The staged copy of the sandbox binary (tens of MB) goes; the logs and verdicts stay.
        if self.sandbox != self.opts.sandbox:
            shutil.rmtree(os.path.dirname(self.sandbox), ignore_errors=True)

    # --- the comparison -------------------------------------------------------------------------------------
    def regressions(self, module, config):
        """Tests failing in `config` but not on the host (every failure when the host was not run), less the
        expected ones; a run that failed without naming a test counts as one."""
        inside = self.results.get((module, config))
        host = self.results.get((module, "host"))
        if inside is None or inside.ok:
            return []
        if not inside.failed:
            return [f"(exit {inside.rc}, no failing test named: see the log)"]
        expected = inside.expected()
        failed = [t for t in inside.failed if t not in expected]
        if host is None or host.ok:
            return failed
        return [t for t in failed if t not in host.failed]

    def report(self):
        cols = [c for c in CONFIGS if c in self.configs]
        rows = []
        for module in self.opts.modules:
            row = [module]
            for config in cols:
                r = self.results.get((module, config))
                if r is None:
                    row.append("n/a")
                    continue
                cell = f"{r.summary()} {r.seconds:.0f}s"
                host = self.results.get((module, "host"))
                if config != "host" and host and host.ran is not None:
                    extra = sorted(set(r.skipped) - set(host.skipped))
                    if extra:
                        cell += f" +{len(extra)}skip"
                row.append(cell)
            rows.append(row)
        header = ["module", *cols]
        widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
        line = "  ".join("{:<%d}" % w for w in widths)
        print()
        print("== CPython regression tests: host and inside `sandbox run` ==")
        print(line.format(*header))
        print(line.format(*["-" * w for w in widths]))
        for row in rows:
            print(line.format(*row))
        total = {c: sum(r.seconds for (m, cc), r in self.results.items() if cc == c) for c in cols}
        print(line.format("(total)", *[f"{total[c]:.0f}s" for c in cols]))
        print("(+Nskip: tests skipped in that configuration but run on the host)")

        failing = False
        for module in self.opts.modules:
            for config in cols:
                r = self.results.get((module, config))
                if r is None or r.ok:
                    continue
                new = self.regressions(module, config) if config != "host" else []
                expected = r.expected()
                if new:
                    failing = True
                if config == "host":
                    kind = "fails on the host"
                elif new:
                    kind = "REGRESSION"
                elif len(expected) == len(r.failed):
                    kind = "expected failures only"
                else:
                    kind = "fails on the host too"
                print()
                print(f"-- {module} / {config}: {kind}; exit {r.rc}"
                      + (f", verdict {r.verdict}" if r.verdict else "")
                      + (f", stopped by --timeout in {r.timeout}" if r.timeout else "")
                      + f"; log {r.log}")
                plain = []
                for t in r.failed:
                    if config == "host" or t in new:
                        plain.append(t)
                    elif t not in expected:
                        print(f"     {t}   (fails on the host too)")
                print_tests(plain)
                for reason in dict.fromkeys(expected.values()):
                    tests = [t for t, why in expected.items() if why == reason]
                    print(f"     xfail {', '.join(tests)}: {reason}")
                for t in new:
                    if t not in r.failed:
                        print(f"     {t}")
                # clone3 is always denied (ENOSYS, by design: its flags are out of the filter's reach) and libc
                # falls back to clone; only the other denials can explain a failure.
                denied = [(n, c) for n, c in r.denied if n != "clone3"]
                if denied:
                    print("     denied system calls: " + ", ".join(f"{n} x{c}" for n, c in denied))
        for module in self.opts.modules:
            host = self.results.get((module, "host"))
            for config in cols:
                r = self.results.get((module, config))
                if config == "host" or r is None or host is None or not self.opts.show_skips:
                    continue
                extra = sorted(set(r.skipped) - set(host.skipped))
                if extra:
                    print(f"\n-- {module} / {config}: skipped there, run on the host:")
                    for t in extra:
                        print(f"     {t}: {r.skipped[t][:150]}")
        for (module, config), r in self.results.items():
            listed = EXPECTED.get(config, {}).get(module, {})
            passing = [t for t in listed if t not in r.failed and t not in r.skipped and r.ran]
            if passing and not r.timeout:
                print(f"\n(note: {module} / {config}: expected to fail but did not: {', '.join(passing)}; "
                      "EXPECTED in scripts/cpython_tests.py can lose them)")
        if self.skipped_configs:
            print()
            for config, why in self.skipped_configs.items():
                print(f"(not run: {config}: {why})")
        print(f"\nignored everywhere (regrtest -i): {', '.join(IGNORED)}")
        print(f"logs and verdicts: {self.out}")
        if failing:
            print("\nRESULT: a module fails inside a sandbox while it passes on the host (see REGRESSION above)")
        else:
            print("\nRESULT: no module fails inside a sandbox that passes on the host")
        return 1 if failing else 0


def print_tests(tests, limit=30):
    """One test a line; past `limit`, one line per test class with its methods."""
    if len(tests) <= limit:
        for t in tests:
            print(f"     {t}")
        return
    by_class = {}
    for t in tests:
        cls, _, method = t.rpartition(".")
        by_class.setdefault(cls, []).append(method)
    for cls, methods in by_class.items():
        print(f"     {cls} ({len(methods)}): {', '.join(methods)}")


def say(msg):
    print(f"==> {msg}", flush=True)


def main(argv):
    p = argparse.ArgumentParser(prog="cpython-tests.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="*", help=f"test modules, in every configuration (default: {' '.join(FULL)}; "
                   f"in the VM only {' '.join(VM_CI)})")
    p.add_argument("--full", action="store_true", help="every module of the default in the VM too")
    p.add_argument("--jobs", type=int, default=2, help="module runs at once (default 2)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS))
    p.add_argument("--sandbox", required=True, help="the sandbox binary")
    p.add_argument("--out", help="directory for logs and verdicts (default: a new one under /tmp)")
    p.add_argument("--test-timeout", type=int, default=120, help="regrtest --timeout per test, seconds")
    p.add_argument("--wall", type=int, default=600, help="wall-clock limit of one module's run, seconds")
    p.add_argument("--vm-scale", type=int, default=5, help="the VM's limits are this many times longer (TCG)")
    p.add_argument("--show-skips", action="store_true", help="list the tests skipped inside but run on the host")
    p.add_argument("--policy", help="a TOML policy the sandbox starts from (readable by uid 65534), e.g. to see "
                   "what a policy change would do: [landlock] restrict_tcp = false")
    p.add_argument("--from", dest="from_dir", help="run nothing: report again on the logs of an earlier --out DIR")
    opts = p.parse_args(argv)
    if opts.full and opts.modules:
        p.error("--full and a list of modules exclude each other")
    if opts.modules:
        opts.vm_modules = opts.modules
    else:
        opts.modules = FULL
        opts.vm_modules = FULL if opts.full or opts.from_dir else VM_CI
    opts.configs = [c.strip() for c in opts.configs.split(",") if c.strip()]
    bad = [c for c in opts.configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configuration {', '.join(bad)} (known: {', '.join(CONFIGS)})")
    for need, what in ((PYTHON, "Debian's python3"), (os.path.join(TESTS_DIR, "test_os.py"),
                                                      "libpython3.11-testsuite")):
        if not os.path.exists(need):
            print(f"cpython-tests: {need} is missing: install {what}", file=sys.stderr)
            return 2
    if not os.access(opts.sandbox, os.X_OK):
        print(f"cpython-tests: {opts.sandbox} is not an executable", file=sys.stderr)
        return 2
    if opts.from_dir:
        opts.out = os.path.abspath(opts.from_dir)
        h = Harness(opts)
        h.load()
        return h.report()
    opts.sandbox = os.path.abspath(opts.sandbox)
    if opts.policy:
        opts.policy = os.path.abspath(opts.policy)
    made = not opts.out
    opts.out = os.path.abspath(opts.out or tempfile.mkdtemp(prefix="cpython-tests."))
    h = Harness(opts)
    h.run()
    rc = h.report()
    if made and rc == 0:
        # Nothing to look at: the logs of a passing run in a directory of our own go (--out DIR keeps them).
        shutil.rmtree(opts.out, ignore_errors=True)
        print("(logs removed: every module passed; --out DIR keeps them)")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
