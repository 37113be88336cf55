"""A real systemd in a container (systemd-nspawn over a debootstrapped Debian 12, cached under the
git-ignored .cache/), to run tcpopsd.service as a user would: systemctl, journalctl."""
import os
import shutil
import subprocess
import time

from helpers import ROOT, wait_for

CACHE = os.path.join(ROOT, ".cache", "nspawn-bookworm")
BUILD = os.path.dirname(os.environ.get("TCPOPSD", os.path.join(ROOT, ".build", "debug", "tcpopsd")))


def unavailable():
    """Why a container cannot be had here, or None."""
    if os.geteuid() != 0:
        return "needs root for systemd-nspawn"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install systemd-container debootstrap)"
    if not os.path.isdir(CACHE):
        tmp = CACHE + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.dirname(CACHE), exist_ok=True)
        p = subprocess.run(["debootstrap", "--variant=minbase", "--include=systemd,dbus,systemd-sysv", "bookworm", tmp],
                           capture_output=True, text=True)
        if p.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return f"debootstrap failed: {p.stdout[-300:]} {p.stderr[-300:]}"
        os.rename(tmp, CACHE)
    return _add_packages(CACHE, IMAGE_PACKAGES)


# Installed into the image beside what debootstrap put there (and into an image cached before a
# package was added here): libnss-systemd, as a standard Debian install has it (DynamicUser uids
# resolve to names).
IMAGE_PACKAGES = ("libnss-systemd",)


def _add_packages(image, packages):
    """Installs what `image` lacks of `packages` (apt in a container of its own, on the host's
    network); returns why it could not, or None."""
    missing = [p for p in packages if not os.path.exists(os.path.join(image, "var/lib/dpkg/info", f"{p}.list"))
               and not os.path.exists(os.path.join(image, "var/lib/dpkg/info", f"{p}:amd64.list"))]
    if not missing:
        return None
    p = subprocess.run(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", image, "--pipe", "sh", "-c",
                        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                        + " ".join(missing)], capture_output=True, text=True)
    if p.returncode != 0:
        return f"installing {' '.join(missing)} into the container image failed: {p.stdout[-300:]} {p.stderr[-300:]}"
    return None


class Container:
    def __init__(self, name, image=CACHE, netns=None, uuid=None, clean=False, binds=()):
        """A container booted from `image`; in the network namespace /run/netns/`netns` when given
        (its own addresses), else on the host's network; with machine ID `uuid` when given (an
        image with an empty /etc/machine-id takes it). `clean`: a Debian 12 as installed, without
        this build or the Swift toolchain mounted in; `binds`: (host folder, where) pairs, read-only."""
        self.name = name
        self.log = open(f"/tmp/{name}.nspawn.log", "wb")
        net = [f"--network-namespace-path=/run/netns/{netns}"] if netns else []
        if uuid:
            net.append(f"--uuid={uuid}")
        mounts = [] if clean else ["--bind-ro=/opt/swift", f"--bind-ro={BUILD}:/opt/tcpopsd"]
        mounts += [f"--bind-ro={host}:{inside}" for host, inside in binds]
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", image, "-b", "--keep-unit", "--register=no", "-M", name, "--volatile=overlay",
             *mounts, *net],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.pid = wait_for(self._init_pid, timeout=30, what="the container's init")
            wait_for(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"),
                     timeout=60, interval=0.2, what="the container's systemd to be running")
        except BaseException:
            # Nobody will call close() on a container that never came up: do not leave it running.
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            raise

    def _init_pid(self):
        """The container's systemd. nspawn's child is briefly an intermediate process that forks the
        init and exits; nsenter needs the init itself, so the child must already be systemd."""
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {open(self.log.name).read()[-2000:]}")
        p = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        for pid in p.stdout.split():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "systemd":
                        return int(pid)
            except OSError:
                pass
        return None

    def run(self, *args, check=True, input=None, timeout=60):
        p = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *args], capture_output=True, text=True,
                           input=input, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def write(self, path, text, mode="0644"):
        self.run("sh", "-c", f"mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}", input=text)

    def install(self):
        """tcpopsd and tcpopsctl from this build, and the project's units, as `make install` lays them out."""
        self.run("cp", "/opt/tcpopsd/tcpopsd", "/opt/tcpopsd/tcpopsctl", "/usr/local/bin/")
        for unit in ("tcpopsd.service", "tcpopsd.socket"):
            self.write(f"/etc/systemd/system/{unit}", open(os.path.join(ROOT, "systemd", unit)).read())
        self.write("/usr/local/lib/systemd/catalog/tcpopsd.catalog", open(os.path.join(ROOT, "docs", "catalog", "tcpopsd.catalog")).read())
        self.run("journalctl", "--update-catalog")
        self.run("systemctl", "daemon-reload")

    def close(self):
        if self.proc.poll() is None:
            self.run("systemctl", "poweroff", check=False)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
