"""The host key of an ssh:// docker host, read from the stack's known_hosts file (stackspec/ssh.py).

OpenSSH reads that file itself (`UserKnownHostsFile`); Go's ssh client in
`command.remote.CopyToRemote` needs the key handed over (``host_key``), and with none it
accepts any host. So the program looks the host up the way OpenSSH does (`ssh-keygen -F`,
which also finds hashed entries) and gives CopyToRemote that key: both clients trust the same
file. With StrictHostKeyChecking=yes (the default) a host the file does not know is refused at
preview, before anything changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

from stackspec.ssh import SshTarget

# Preferred first: CopyToRemote restricts the handshake to the key's own type.
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512",
             "ssh-rsa")


def known_host_keys(target: SshTarget) -> list[str]:
    """`TYPE BASE64` of each key the known_hosts file holds for the host (its port included)."""
    path = os.path.expanduser(target.known_hosts_file)
    keygen = shutil.which("ssh-keygen")
    if keygen is None or not os.path.isfile(path):
        return []
    found = subprocess.run([keygen, "-F", target.known_hosts_name, "-f", path], capture_output=True, text=True,
                           timeout=30)
    keys = []
    for line in found.stdout.splitlines():
        words = line.split()
        if line.startswith("#") or len(words) < 3 or words[0].startswith("@"):  # comments, @revoked/@cert-authority
            continue
        keys.append(f"{words[1]} {words[2]}")
    return keys


def known_host_key(target: SshTarget) -> Optional[str]:
    """The one key CopyToRemote is told to expect (the strongest type known), None if none is known."""
    keys = known_host_keys(target)
    ranked = sorted(keys, key=lambda k: KEY_TYPES.index(k.split()[0]) if k.split()[0] in KEY_TYPES else len(KEY_TYPES))
    return ranked[0] if ranked else None


def host_key_problem(target: SshTarget, at: str = "docker") -> Optional[str]:
    """Why every ssh client would refuse the host, said before anything changes; None when its key is known
    (or the stack turned checking off)."""
    if target.strict_host_key_checking == "no" or known_host_keys(target):
        return None
    if target.strict_host_key_checking == "accept-new":
        return None  # OpenSSH learns it on first use; CopyToRemote then reads it from the file
    path = target.known_hosts_file
    port = f"-p {target.port} " if target.port else ""
    return (f"docker host {target.describe()}: its host key is not in {path} (from {at}.known_hosts, or ssh's default), "
            "and StrictHostKeyChecking=yes refuses a host it does not know; nothing was changed. Fix: on this "
            f"machine run `ssh-keyscan {port}-t ed25519 {target.host} >> {path}`, compare the fingerprint "
            f"(`ssh-keygen -lf {path}`) with the server's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` "
            "on it), then run the command again")
