"""Install-time vendoring of the NiiVue bundle (``make venv`` runs ``python -m viewer.vendor``).

The viewer's page loads NiiVue (WebGL2 viewer for medical volumes, BSD-2-Clause) from
``viewer/static/vendor/niivue.umd.js``, never from a CDN. This module brings that file from the npm registry's tarball
of ``@niivue/niivue`` at the pinned version, checks the tarball against the registry's published integrity
(sha512), and writes the UMD bundle (a classic script that defines ``window.niivue``, so it also works from
``file://`` in a static report) with a ``NOTICE`` naming its source and licence. ``npm pack`` is tried when a direct
download fails (a machine whose npm goes through a proxy or mirror). Nothing here runs when the page is served.

Only the standard library is used: this runs right after ``pip install``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

#: The pinned NiiVue release and the registry's integrity string of its tarball (``npm view @niivue/niivue@0.69.0
#: dist.integrity``).
VERSION = "0.69.0"
INTEGRITY = "sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA=="
TARBALL = f"https://registry.npmjs.org/@niivue/niivue/-/niivue-{VERSION}.tgz"
#: The file of the tarball the page loads.
MEMBER = "package/dist/niivue.umd.js"
#: Where it goes.
VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
BUNDLE = VENDOR_DIR / "niivue.umd.js"


def integrity_of(data: bytes) -> str:
    """The npm integrity string (``sha512-`` + base64 digest) of ``data``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (a fixed https URL)
        return r.read()


def _npm_pack(version: str) -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"@niivue/niivue@{version}", "--silent"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=300,
        )
        (tgz,) = Path(tmp).glob("*.tgz")
        return tgz.read_bytes()


def fetch_tarball(timeout: float = 120.0) -> bytes:
    """The pinned tarball, checked against :data:`INTEGRITY`.

    Raises:
        RuntimeError: neither a download nor ``npm pack`` gave it (both reasons named), or its checksum differs.
    """
    errors = []
    for how, get in (("download", lambda: _download(TARBALL, timeout)), ("npm pack", lambda: _npm_pack(VERSION))):
        try:
            data = get()
        except Exception as e:  # noqa: BLE001 (any failure: try the next way, report all)
            errors.append(f"{how}: {e}")
            continue
        got = integrity_of(data)
        if got != INTEGRITY:
            raise RuntimeError(f"{TARBALL} ({how}): checksum {got} differs from the pinned {INTEGRITY}")
        return data
    raise RuntimeError(f"could not fetch {TARBALL}: " + "; ".join(errors))


def vendor(dest: Path = VENDOR_DIR, force: bool = False) -> Path:
    """Write ``dest/niivue.umd.js`` and ``dest/NOTICE`` (nothing when they are there for :data:`VERSION`).

    Returns:
        the bundle's path.
    """
    bundle, notice = dest / "niivue.umd.js", dest / "NOTICE"
    stamp = f"@niivue/niivue {VERSION}"
    if not force and bundle.is_file() and notice.is_file() and stamp in notice.read_text():
        return bundle
    data = fetch_tarball()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise RuntimeError(f"{TARBALL} has no {MEMBER}")
        js = member.read()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(js)
    os.replace(tmp, bundle)
    notice.write_text(
        f"{bundle.name}: {stamp} ({MEMBER} of {TARBALL}, {INTEGRITY}).\n"
        "NiiVue is distributed under the BSD 2-Clause License: https://github.com/niivue/niivue (LICENSE).\n"
        "Written at install time by `python -m viewer.vendor`; not part of this repository.\n"
    )
    return bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m viewer.vendor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="fetch again even when the pinned bundle is there")
    a = ap.parse_args(argv)
    try:
        path = vendor(force=a.force)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"NiiVue {VERSION}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
