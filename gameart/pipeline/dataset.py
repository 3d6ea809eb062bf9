"""Build a "which game is this image from" dataset from Debian's game data packages.

Each game's art comes from its Debian `*-data` package (`apt-get download`, read straight out of
the package without installing it). Images are filtered (too small, near-blank, duplicates by
pixel content), capped per game, and split train/test by a hash of their pixels, so the split
is the same on every machine and every run. A report.json records counts and each package's
licence. Downloads are cached in data/debs; a second run with the same settings does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from handler.decode import decode_image
from handler.errors import RequestError
from modelspec.meta import PROJECT_POLICY

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FILTER_VERSION = 2  # bump when the filtering code changes, so cached datasets are rebuilt

# game (class name) -> Debian package. Nine games, about 480 MB of packages in all.
GAMES: dict[str, str] = {
    "extreme tux racer": "extremetuxracer-data",
    "freeciv": "freeciv-data",
    "frozen bubble": "frozen-bubble-data",
    "hedgewars": "hedgewars-data",
    "lincity-ng": "lincity-ng-data",
    "neverball": "neverball-data",
    "pingus": "pingus-data",
    "scorched 3d": "scorched3d-data",
    "wesnoth": "wesnoth-1.16-data",
}


class DatasetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Filters:
    min_side: int = 64  # smaller sprites carry too little to learn from
    max_aspect: float = 4.0  # skip strips (fonts, tile sheets, elevation maps)
    min_std: float = 8.0  # spatial spread of the liveliest channel; below it: near-blank
    per_class: int = 400  # cap, so the largest game does not drown the rest
    test_percent: int = 20


@dataclass
class GameReport:
    package: str
    version: str = ""
    licence: str = ""
    download_bytes: int = 0
    candidates: int = 0
    too_small: int = 0
    near_blank: int = 0
    duplicates: int = 0
    unreadable: int = 0
    kept: int = 0
    train: int = 0
    test: int = 0


@dataclass
class Candidate:
    pixel_hash: str
    suffix: str
    data: bytes = field(repr=False)


# ---- packages ------------------------------------------------------------------------------
def download(package: str, debs: Path) -> Path:
    """The package's .deb in the cache, fetched with apt-get download if absent."""
    debs.mkdir(parents=True, exist_ok=True)
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    if not shutil.which("apt-get"):
        raise DatasetError("apt-get is needed to fetch Debian game data packages")
    result = _apt_download(package, debs)
    if result.returncode != 0 and "Unable to locate" in result.stderr:
        _apt_update()
        result = _apt_download(package, debs)
    if result.returncode != 0:
        raise DatasetError(f"apt-get download {package} failed:\n{result.stderr.strip()}")
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if not cached:
        raise DatasetError(f"apt-get download {package} wrote no .deb")
    return cached[-1]


def _apt_download(package: str, debs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", "download", "-q", package], cwd=debs, capture_output=True, text=True
    )


def _apt_update() -> None:
    if os.geteuid() != 0:
        raise DatasetError("apt's package lists are missing; run `sudo apt-get update` first")
    print("apt package lists missing: running apt-get update ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)


def package_version(deb: Path) -> str:
    return deb.name.split("_")[1].replace("%3a", ":")


def read_images(deb: Path, package: str) -> tuple[list[tuple[str, bytes]], str]:
    """(path, bytes) of every PNG/JPEG in the package, and its copyright text; no install."""
    process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    images, copyright_text = [], ""
    with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            name = member.name
            if name.endswith(f"/doc/{package}/copyright"):
                copyright_text = archive.extractfile(member).read().decode("utf-8", "replace")
            elif name.lower().endswith(IMAGE_SUFFIXES):
                images.append((name, archive.extractfile(member).read()))
    if process.wait() != 0:
        raise DatasetError(f"dpkg-deb could not read {deb}")
    return images, copyright_text


def licence_of(copyright_text: str) -> str:
    """The licence of the package's main files, from its Debian copyright file."""
    match = re.search(r"^Files:\s*\*\s*$.*?^License:[ \t]*([^\n]+)", copyright_text, re.M | re.S)
    if match:
        return match.group(1).strip()
    text = " ".join(copyright_text.split())
    match = re.search(r"GNU General Public License.*?version (\d)", text)
    if match:
        later = "or (at your option) any later" in text
        return f"GPL-{match.group(1)}{'+' if later else ''}"
    return "see the package's copyright file"


# ---- filtering -----------------------------------------------------------------------------
def screen_image(data: bytes, filters: Filters) -> tuple[str, str | None]:
    """("ok", pixel hash) or (reason, None). Uses the server's own decoder and RGB conversion."""
    try:
        image = decode_image(data, max_pixels=40_000_000, policy=PROJECT_POLICY)
    except RequestError:
        return "unreadable", None
    width, height = image.size
    if min(width, height) < filters.min_side or max(width, height) > filters.max_aspect * min(
        width, height
    ):
        return "too_small", None
    pixels = np.asarray(image)
    if pixels.reshape(-1, 3).std(axis=0).max() < filters.min_std:  # spread across the image
        return "near_blank", None
    return "ok", hashlib.sha256(pixels.tobytes()).hexdigest()


def select(
    game: str,
    package: str,
    debs: Path,
    filters: Filters,
    seen: set[str],
    report: GameReport,
    progress: tqdm,
) -> list[Candidate]:
    deb = download(package, debs)
    report.version, report.download_bytes = package_version(deb), deb.stat().st_size
    images, copyright_text = read_images(deb, package)
    report.licence = licence_of(copyright_text)
    report.candidates = len(images)
    chosen = []
    progress.reset(total=len(images))
    progress.set_description(f"{game:18s}")
    for name, data in images:
        verdict, pixel_hash = screen_image(data, filters)
        progress.update()
        if verdict != "ok":
            setattr(report, verdict, getattr(report, verdict) + 1)
            continue
        if pixel_hash in seen:
            report.duplicates += 1
            continue
        seen.add(pixel_hash)
        chosen.append(Candidate(pixel_hash, Path(name).suffix.lower(), data))
    # A deterministic cap: the same images on every machine, whatever order the tar had.
    chosen.sort(key=lambda c: c.pixel_hash)
    return chosen[: filters.per_class]


def is_test(pixel_hash: str, test_percent: int) -> bool:
    return int(pixel_hash[:8], 16) % 100 < test_percent


# ---- the command ---------------------------------------------------------------------------
def build(out: Path, debs: Path, games: dict[str, str], filters: Filters) -> dict:
    config = {"games": games, "filters": asdict(filters), "filter_version": FILTER_VERSION}
    report_path = out / "report.json"
    if report_path.is_file():
        previous = json.loads(report_path.read_text())
        if previous.get("config") == config:
            print(
                f"dataset up to date in {out} ({previous['totals']['train']} train, "
                f"{previous['totals']['test']} test images); nothing to do"
            )
            return previous
    started = time.monotonic()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    seen: set[str] = set()
    reports: dict[str, GameReport] = {}
    with tqdm(unit="img", dynamic_ncols=True) as progress:
        for game, package in games.items():
            report = reports[game] = GameReport(package)
            for candidate in select(game, package, debs, filters, seen, report, progress):
                split = "test" if is_test(candidate.pixel_hash, filters.test_percent) else "train"
                target = staging / split / game / f"{candidate.pixel_hash[:16]}{candidate.suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(candidate.data)
                report.kept += 1
                setattr(report, split, getattr(report, split) + 1)
    summary = {
        "config": config,
        "games": {game: asdict(r) for game, r in reports.items()},
        "totals": {
            k: sum(getattr(r, k) for r in reports.values())
            for k in ("download_bytes", "candidates", "kept", "train", "test")
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    (staging / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # only a finished dataset ever sits at `out`
    print_summary(summary, out)
    return summary


def print_summary(summary: dict, out: Path) -> None:
    print(f"\n{'game':18s} {'package':22s} {'licence':14s} {'MB':>5s} {'train':>5s} {'test':>5s}")
    for game, r in summary["games"].items():
        print(
            f"{game:18s} {r['package']:22s} {r['licence'][:14]:14s} "
            f"{r['download_bytes'] / 1e6:5.0f} {r['train']:5d} {r['test']:5d}"
        )
    totals = summary["totals"]
    print(
        f"{'total':18s} {'':22s} {'':14s} {totals['download_bytes'] / 1e6:5.0f} "
        f"{totals['train']:5d} {totals['test']:5d}   -> {out}"
    )
