#!/usr/bin/env python3
"""Known vulnerabilities in the Python test tools' virtualenv, from PyPI's JSON API.

What pip-audit does with its default service, in the standard library only: for each
installed distribution, PyPI's `/pypi/<name>/<version>/json` lists the advisories
(OSV: PYSEC, GHSA) that affect that version. Where only the project endpoint
`/pypi/<name>/json` answers (a registry mirror without per-version pages), its list
covers the latest release alone: packages installed at the latest release are checked
with it, the others are reported as not checked.

Usage: scripts/audit-python.py VENV [--ignore ID ...]
Exit status: 0 clean (or only ignored advisories), 1 vulnerable, 2 nothing could be read.
"""

import argparse
import concurrent.futures
import json
import subprocess
import sys
import urllib.error
import urllib.request

PYPI = "https://pypi.org/pypi"


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def installed(venv):
    freeze = subprocess.run(
        [f"{venv}/bin/python", "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(line.split("==", 1)) for line in freeze.splitlines() if "==" in line]


def check(package):
    """(name, version, how it was checked or None, advisories)."""
    name, version = package
    exact = fetch(f"{PYPI}/{name}/{version}/json")
    if exact is not None:
        return name, version, "exact", exact.get("vulnerabilities", [])
    project = fetch(f"{PYPI}/{name}/json")
    if project is not None and project["info"]["version"] == version:
        return name, version, "latest", project.get("vulnerabilities", [])
    return name, version, None, []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv")
    parser.add_argument("--ignore", action="append", default=[], metavar="ID")
    args = parser.parse_args()
    ignored = set(args.ignore)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(check, installed(args.venv)))
    checked = [r for r in results if r[2]]
    unchecked = [f"{name}=={version}" for name, version, how, _ in results if not how]
    if not checked:
        print("audit-python: PyPI answered for no package; nothing was checked", file=sys.stderr)
        return 2
    found = False
    for name, version, _, advisories in checked:
        for advisory in advisories:
            ids = {advisory["id"], *advisory.get("aliases", [])}
            fixed = ", ".join(advisory.get("fixed_in") or []) or "no fixed release"
            mark = "ignored" if ids & ignored else "VULNERABLE"
            found |= mark == "VULNERABLE"
            print(f"{mark}: {name}=={version} {advisory['id']} ({', '.join(sorted(ids - {advisory['id']}))}); fixed in: {fixed}")
    print(f"audit-python: {len(checked)} of {len(results)} packages checked")
    if unchecked:
        print(
            "audit-python: not checked (not the latest release, and this registry has no "
            f"per-version pages): {' '.join(unchecked)}"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
