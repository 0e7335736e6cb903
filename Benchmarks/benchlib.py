"""What the benchmarks share: a broker on a free port, CPU readings, the machine, docs/benchmarks.md sections."""
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def which(name):
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not path:
        sys.exit(f"{name} not found: run `make deps` first")
    return path


def start_broker(directory, extra_lines=()):
    """mosquitto with the dev configuration on a free port; `extra_lines` are appended (more listeners)."""
    port = free_port()
    template = open(os.path.join(ROOT, "broker-config/dev/mosquitto.conf")).read().splitlines()
    lines = [f"listener {port} 127.0.0.1" if l.startswith("listener ") else l for l in template]
    lines += ["log_type subscribe"] + list(extra_lines)
    if os.geteuid() == 0:
        lines += ["user root"]
    config = os.path.join(directory, "mosquitto.conf")
    log = os.path.join(directory, "mosquitto.log")
    open(config, "w").write("\n".join(lines) + "\n")
    proc = subprocess.Popen([which("mosquitto"), "-c", config], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, log
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("mosquitto did not start: " + open(log).read())


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (from /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    mosq = subprocess.run([which("mosquitto"), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    swift = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}; {mosq}; {swift}"


def release_binaries(skip_build, *products):
    """The shipped builds of products: built now, or (skip_build) as they are."""
    if not skip_build:
        return build_release(*products)
    bindir = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()
    return [os.path.join(bindir, p) for p in products]


def build_release(*products):
    """Builds products the way they ship (scripts/build-release.sh); returns their paths."""
    subprocess.run([os.path.join(ROOT, "scripts/build-release.sh"), *products], check=True, cwd=ROOT)
    bindir = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()
    return [os.path.join(bindir, p) for p in products]


def stop_all(procs, grace=20):
    """Stops every process still running (SIGTERM, SIGKILL after GRACE seconds), the last started first."""
    for p in reversed([p for p in procs if p is not None]):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def write_section(path, name, section):
    """Replaces the <!-- name:begin --> ... <!-- name:end --> block of a Markdown file (or appends it)."""
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    open(path, "w").write(text)


def start_postgres(directory):
    """A PostgreSQL server of its own (Debian's initdb and pg_ctl, as the postgres user when run as root) on a free
    loopback port, with the default durability settings; returns (url, password_file, stop)."""
    versions = sorted(int(v) for v in os.listdir("/usr/lib/postgresql") if v.isdigit())
    if not versions:
        sys.exit("PostgreSQL is not installed: run `make deps` first")
    bindir = f"/usr/lib/postgresql/{versions[-1]}/bin"
    data = os.path.join(directory, "pgdata")
    password_file = os.path.join(directory, "pg-password")
    open(password_file, "w").write("bench-" + os.urandom(8).hex() + "\n")
    os.chmod(password_file, 0o600)
    port = free_port()
    as_postgres = []
    if os.getuid() == 0:
        import pwd
        entry = pwd.getpwnam("postgres")
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        os.chown(password_file, entry.pw_uid, entry.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_postgres + [f"{bindir}/initdb", "-D", data, "-U", "edgefleet", "--auth=scram-sha-256", f"--pwfile={password_file}",
                                  "--encoding=UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_postgres + [f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(directory, "postgres.log"), "-w", "-o",
                                  f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    password = open(password_file).read().strip()
    subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "edgefleet", "-d", "postgres", "-c",
                    "CREATE DATABASE edgefleet"], check=True, env={**os.environ, "PGPASSWORD": password})

    def stop():
        subprocess.run(as_postgres + [f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], stdout=subprocess.DEVNULL)
    return f"postgres://edgefleet@127.0.0.1:{port}/edgefleet", password_file, stop
