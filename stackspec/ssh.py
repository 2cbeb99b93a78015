"""One ssh configuration per `ssh://` docker host, from one place in the stack (`docker:`).

Three clients talk to a remote server: the docker provider (the docker CLI's ssh helper, which
execs `ssh` with the provider's ``ssh_opts``), the image load and the docker CLI calls of the
preflight and the model provider (`ssh ... docker ...`, run here), and the model file copy
(`command.remote.CopyToRemote`, Go's own ssh client). ``SshTarget`` is what they share: the
host, user and port of the URL; the key (`ssh_key`, or `-i` in `ssh_opts`); the known_hosts
file and the host-key policy. OpenSSH gets them as options, Go's client as a private key, a
fixed host key read from that known_hosts file, and the same user and port.

The policy defaults to ``StrictHostKeyChecking=yes`` with ``BatchMode=yes``: an unknown or
changed host key is refused, never learned or asked about. ``ssh_opts`` may hold ``-i FILE``,
``-o Key=Value`` (also ``-oKey=Value``) and nothing else: host, user and port come from the URL,
so every client agrees on them. Standard library only.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlparse

# Options that would make one client disagree with the others, or run something here.
_REFUSED_OPTIONS = {"hostname", "port", "user", "proxycommand", "localcommand", "permitlocalcommand",
                    "remotecommand", "controlmaster", "controlpath", "identityagent", "knownhostscommand"}
_POLICIES = ("yes", "no", "accept-new")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"  # OpenSSH's own default, as ssh expands it


@dataclass(frozen=True)
class SshTarget:
    """Where and how every client reaches one ssh:// docker host."""

    host: str  # the host name or address in the URL (ssh://user@HOST:port)
    user: Optional[str] = None
    port: Optional[int] = None
    identity_file: Optional[str] = None  # the private key; None: the ssh agent / ssh's defaults
    known_hosts: Optional[str] = None  # None: ~/.ssh/known_hosts
    strict_host_key_checking: str = "yes"
    extra_options: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # other -o Key=Value

    @property
    def known_hosts_file(self) -> str:
        return self.known_hosts or DEFAULT_KNOWN_HOSTS

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts spells it: `host`, or `[host]:port` for another port than 22."""
        return self.host if self.port in (None, 22) else f"[{self.host}]:{self.port}"

    def options(self) -> list[str]:
        """OpenSSH options, the same for the docker provider's ssh_opts and the `ssh` calls here."""
        opts = ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={self.strict_host_key_checking}"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity_file:
            opts += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        for key, value in self.extra_options:
            opts += ["-o", f"{key}={value}"]
        return opts

    def argv(self, *remote_command: str, ssh: str = "ssh") -> list[str]:
        """`ssh` running ``remote_command`` on the host; each word quoted for the remote shell
        (ssh joins its arguments into one command line), so values arrive as given."""
        login = (["-l", self.user] if self.user else []) + (["-p", str(self.port)] if self.port else [])
        return [ssh, *self.options(), *login, "--", self.host, *map(shlex.quote, remote_command)]

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"


def parse_ssh_opts(ssh_opts: list[str]) -> tuple[Optional[str], dict[str, str], list[str]]:
    """(identity file, {option key (lower case): "Key=Value" as written}, problems) of a stack's `ssh_opts`."""
    identity: Optional[str] = None
    options: dict[str, str] = {}
    problems: list[str] = []
    words = list(ssh_opts)
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-i", "-o"):
            if i + 1 >= len(words):
                problems.append(f"`{word}` needs a value after it")
                break
            value, i = words[i + 1], i + 2
        elif word.startswith(("-i", "-o")) and len(word) > 2:
            word, value, i = word[:2], word[2:], i + 1
        else:
            given = word
            if word.startswith("-") and i + 1 < len(words) and not words[i + 1].startswith("-"):
                given, i = f"{word} {words[i + 1]}", i + 1  # `-p 2222` is one mistake, not two
            problems.append(f"`{given}` is not an option this tool passes on (only `-i FILE` and `-o Key=Value`; "
                            "user, host and port belong in docker.host, e.g. ssh://ops@gpu-node-2:2222)")
            i += 1
            continue
        if word == "-i":
            identity = value
            continue
        key, sep, option_value = value.replace(" ", "=", 1).partition("=")
        if not sep or not key or not option_value:
            problems.append(f"`-o {value}` is not Key=Value")
        elif key.lower() in _REFUSED_OPTIONS:
            problems.append(f"`-o {value}`: {key} is not taken here (host, user and port come from docker.host; "
                            "commands and agents are the operator's own ssh config)")
        elif key.lower() == "identityfile":
            identity = option_value
        else:
            options[key.lower()] = f"{key}={option_value}"  # lower-case key: ssh reads them so; the text as given
    policy = options.get("stricthostkeychecking", "=yes").partition("=")[2]
    if policy.lower() not in _POLICIES:
        problems.append(f"StrictHostKeyChecking={policy}: write yes, accept-new or no")
    return identity, options, problems


def ssh_target(host_url: str, ssh_opts: list[str], ssh_key: Optional[str],
               known_hosts: Optional[str]) -> Optional[SshTarget]:
    """The SshTarget of an ssh:// docker host (None for any other); assumes the options parse
    (stackspec/rules.py reports their problems first)."""
    parsed = urlparse(host_url)
    if parsed.scheme != "ssh" or not parsed.hostname:
        return None
    identity, options, _ = parse_ssh_opts(ssh_opts)
    policy = options.pop("stricthostkeychecking", "=yes").partition("=")[2].lower()
    known = options.pop("userknownhostsfile", "=").partition("=")[2] or known_hosts
    extra = tuple((name, value) for name, _, value in (text.partition("=") for _, text in sorted(options.items())))
    return SshTarget(host=parsed.hostname, user=parsed.username, port=parsed.port,
                     identity_file=ssh_key or identity, known_hosts=known, strict_host_key_checking=policy,
                     extra_options=extra)
