"""Which copy of kcallbacks and kreport the tests import.

`python -m pytest` puts the checkout first on `sys.path`, so `kcallbacks`
would come from the checkout while `kreport` (which lives in `cli/` and
exists only once installed) comes from site-packages: an edit to `cli/` or
`templates/` would be invisible to the tests. So:

- with an editable install (`bash .ci/install --dev`), both packages are
  the checkout's, and every edit is what the tests import;
- with a regular install (`bash .ci/install`, what CI does), both are the
  installed wheel's, as users get them; if the checkout has changed since
  it was installed, the run stops and says so instead of testing old code.
"""

import hashlib
import importlib.metadata
import json
import os
import sys
import sysconfig

# Checkout directory -> installed package directory.
PACKAGE_DIRECTORIES = {
    "kcallbacks": "kcallbacks",
    "cli": "kreport",
    "templates": os.path.join("kreport", "templates"),
}
SOURCE_SUFFIXES = (".py", ".j2")


def _is_editable_install(site):
    # Looked up in site-packages only: a build in the checkout leaves a
    # kcallbacks.egg-info there that says nothing about the install.
    found = list(importlib.metadata.distributions(name="kcallbacks", path=[site]))
    if not found:
        raise SystemExit(
            "kcallbacks is not installed in this environment: run `bash .ci/install` "
            "(or `bash .ci/install --dev` for an editable install)"
        )
    raw = found[0].read_text("direct_url.json")
    return bool(raw) and json.loads(raw).get("dir_info", {}).get("editable", False)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _stale_files(checkout, site):
    """Files of the checkout that differ from, or are missing in, the install."""
    stale = []
    for source, installed in PACKAGE_DIRECTORIES.items():
        for name in sorted(os.listdir(os.path.join(checkout, source))):
            if not name.endswith(SOURCE_SUFFIXES):
                continue
            ours = os.path.join(checkout, source, name)
            theirs = os.path.join(site, installed, name)
            if not os.path.exists(theirs) or _digest(ours) != _digest(theirs):
                stale.append(os.path.join(source, name))
    return stale


def select_tested_code(checkout):
    """Arranges `sys.path` so both packages come from one copy; returns a
    line saying which, for pytest's header. Call before importing either."""
    checkout = os.path.realpath(checkout)
    site = sysconfig.get_paths()["purelib"]
    if _is_editable_install(site):
        return f"the checkout ({checkout}, editable install)"
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != checkout]
    stale = _stale_files(checkout, site)
    if stale:
        shown = ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else "")
        raise SystemExit(
            f"the installed kcallbacks is older than the checkout ({shown} changed): "
            "run `bash .ci/install` again, or `bash .ci/install --dev` for an "
            "editable install that always tests the checkout"
        )
    return f"the installed wheel ({site})"
