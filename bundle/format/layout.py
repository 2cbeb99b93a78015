"""Names of the bundle's layout and of what install writes on the site (standard library only).

The bundle's own paths (MANIFEST.json, the role prefixes) are in bundle/format/manifest.py;
these are the project side: what marks the project checkout, where the program goes, and
what belongs to the site and is never carried nor touched.
"""

from __future__ import annotations

PROGRAM_DIR = "program"
PROJECT_MARKER = "Pulumi.yaml"
# Top-level directories that belong to the site, never to the bundle; install never writes there.
SITE_OWNED_DIRS = (".state", "stacks", "venv", ".git")
# Top-level files of the project that install owns (its record, its lock): never carried, never a program file.
INSTALL_RECORD = ".xinference-offline-installed.json"
INSTALL_LOCK = ".xinference-offline.lock"
# Per stack, where install put the bundle and the models: the program reads it (bundle/format/site_record.py).
SITE_RECORD = ".xinference-offline-site.json"
SITE_OWNED_FILES = (INSTALL_RECORD, INSTALL_LOCK, SITE_RECORD)


def is_site_owned(rel: str) -> bool:
    """A project-relative path in one of the directories the bundle never carries nor touches, or one
    of install's own files at the top. Compared as a case-insensitive file system would (``.GIT/config``
    is ``.git/config`` on one)."""
    parts = rel.split("/")
    top = parts[0].casefold()
    return top in SITE_OWNED_DIRS or (len(parts) == 1 and top in SITE_OWNED_FILES)
