"""`make lint`'s dependency audit: pip-audit over requirements.txt, failing only on a found
vulnerability.

pip-audit needs a vulnerability service: PyPI's JSON API (`--vulnerability-service pypi`) or
OSV (`osv`), tried in that order. Where neither answers -- a machine that only reaches a
package mirror -- pip-audit reports every package as "not found" (PyPI) or stops on a
connection error (OSV); both would read as a clean bill of health, so this script says
plainly that nothing was checked and does not fail lint for it. A vulnerability found by
either service fails it, naming the package, the advisory and the fixed versions.

    python .ci/pip_audit.py [-r requirements.txt] [--service pypi --service osv]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP_AUDIT = Path(sys.executable).with_name("pip-audit")
# Each service is probed first with one query of the kind pip-audit makes (5 s), so a machine
# that cannot use it learns so at once, instead of after pip-audit has resolved the whole
# requirements file (~40 s) and found nothing. A package mirror may answer pypi.org's
# /pypi/<name>/json but not the versioned document that carries the vulnerabilities.
PROBE_TIMEOUT = 5


def _first_pin(requirements: Path) -> tuple[str, str]:
    for line in requirements.read_text().splitlines():
        if match := re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line):
            return match.group(1), match.group(2)
    return "pip", "24.0"


def usable(service: str, requirements: Path) -> str | None:
    """None when ``service`` answers a vulnerability query for the first pinned package of
    ``requirements``, else why not."""
    name, version = _first_pin(requirements)
    if service == "pypi":
        url = f"https://pypi.org/pypi/{name}/{version}/json"
        request = urllib.request.Request(url)
    else:
        url = "https://api.osv.dev/v1/query"
        body = {"package": {"name": name, "ecosystem": "PyPI"}, "version": version}
        request = urllib.request.Request(  # noqa: S310 -- a fixed https URL
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as answer:  # noqa: S310  # nosec B310
            document = json.load(answer)
    except (OSError, ValueError) as exc:
        return f"{url}: {exc.__class__.__name__}: {exc}"
    if service == "pypi" and "vulnerabilities" not in document:
        return f"{url}: no vulnerability data in the answer"
    return None


def audit(requirements: Path, service: str) -> tuple[dict | None, str]:
    """pip-audit's JSON report (None when it produced none) and its error output."""
    command = [
        str(PIP_AUDIT), "-r", str(requirements), "--vulnerability-service", service,
        "--format", "json", "--progress-spinner", "off", "--timeout", "15",
    ]  # fmt: skip
    try:
        done = subprocess.run(  # noqa: S603 -- fixed arguments (this virtualenv's pip-audit), no shell
            command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        return None, "pip-audit did not finish within 900 s"
    try:
        return json.loads(done.stdout), done.stderr
    except json.JSONDecodeError:
        return None, done.stderr or done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--service", action="append", choices=["pypi", "osv"])
    args = parser.parse_args()
    unreachable = []
    for service in args.service or ["pypi", "osv"]:
        if (why := usable(service, args.requirements)) is not None:
            unreachable.append(f"{service}: {why[:200]}")
            continue
        report, errors = audit(args.requirements, service)
        if report is None:
            last = errors.strip().splitlines()[-1:] or ["no output"]
            unreachable.append(f"{service}: {last[0][:200]}")
            continue
        dependencies = report.get("dependencies", [])
        vulnerable = [d for d in dependencies if d.get("vulns")]
        audited = [d for d in dependencies if "skip_reason" not in d]
        if vulnerable:
            print(f"pip-audit ({service}): known vulnerabilities in {len(vulnerable)} packages:")
            for dependency in vulnerable:
                for vuln in dependency["vulns"]:
                    fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
                    print(f"  {dependency['name']} {dependency['version']}: {vuln['id']} "
                          f"(fixed in {fixed})")  # fmt: skip
            return 1
        if audited:
            skipped = len(dependencies) - len(audited)
            print(f"pip-audit ({service}): {len(audited)} packages checked, no known "
                  f"vulnerabilities ({skipped} not found by the service, not checked)")  # fmt: skip
            return 0
        unreachable.append(f"{service}: none of {len(dependencies)} packages could be looked up")
    print("pip-audit: vulnerability service unreachable, not checked")
    for reason in unreachable:
        print(f"  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
