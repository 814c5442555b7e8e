"""`lightfmp demo`: Light-FMP on MovieLens-100k next to the same backbone trained on all fields."""
from __future__ import annotations

from pathlib import Path

from .cache import cache_home
from .checkpoint import reset_hint
from .config import RunConfig
from .datasets import fetch_movielens_100k
from .datasets.movielens import CTR_SHA256
from .errors import LightFMPError
from .io import check_out, lightfmp_kind
from .pipeline import run
from .rundir import open_run
from .progress import Reporter

# The CTR task as the feature-selection literature builds it from MovieLens-100k (label: rating > 3).
MOVIELENS_FIELDS = dict(label="label", multi_hot="genres:|",
                        categorical="user_id,item_id,age,gender,occupation,zip,release_year,hour,weekday")


def demo(out_dir: str | Path | None = None, backbone: str = "deepfm", compare: bool = True, quiet: bool = False,
         force: bool = False, **overrides) -> dict:
    """Each step is announced on stderr (also when it is a log file), the training phases report per epoch. Runs
    already at `out_dir`/lightfmp or /all-fields are replaced where an earlier demo wrote them (runs on the demo's
    MovieLens table); any other run only with `force`."""
    say = Reporter(quiet).log
    steps = 2 if compare else 1
    cfg = RunConfig.from_dict({"backbone": backbone, **MOVIELENS_FIELDS, **overrides}, "demo")  # checked before the fetch
    out_dir = Path(out_dir) if out_dir else cache_home() / "runs" / "demo"
    for name in ("lightfmp", "all-fields")[:steps]:
        _check_place(out_dir / name)  # before the download
    say("demo: fetching MovieLens-100k (downloaded once, then read from the cache)")
    data = fetch_movielens_100k(quiet=quiet)
    cfg = cfg.but(data=str(data))
    for name in ("lightfmp", "all-fields")[:steps]:
        _check_replaceable(out_dir / name, data, force)
    say(f"demo: step 1/{steps}: Light-FMP ({backbone}: gated pretraining, pruning, continued training) -> "
        f"{out_dir / 'lightfmp'}")
    res = {"run_dir": out_dir / "lightfmp", "lightfmp": run(cfg, out_dir / "lightfmp", force=True, quiet=quiet)}
    if compare:
        reset_hint()  # a stop from here is not after the demo's result: the all-fields run is still to come
        say(f"demo: step 2/{steps}: comparison run, the same {backbone} on all fields (--no-select) -> "
            f"{out_dir / 'all-fields'}")
        full = cfg.but(no_select=True, keep=None, threshold=None, target_k=None, continue_epochs=None)  # no rule
        res["all_fields"] = run(full, out_dir / "all-fields", force=True, quiet=quiet)
    say("demo: done")
    return res


def _check_place(path: Path) -> None:
    """Refuse a place no run of the demo's can go (a file on the way, a name too long, a folder that is not a run,
    a file lightfmp did not write there): what each step's own check would refuse, before step 1 and the download."""
    if path.exists() and lightfmp_kind(path) != "run":  # not lightfmp's: --force would not replace it either
        raise LightFMPError(f"{path}: exists and is not a lightfmp run; choose another --out")
    check_out(path, True, "run")


def _check_replaceable(path: Path, data: Path, force: bool) -> None:
    """Refuse to replace, without `force`, a run at `path` of other data than the demo's MovieLens table (someone's
    own run; a run on the demo's table, as an earlier demo left, is replaced)."""
    if not path.exists() or force:
        return
    try:  # by its data's content (the cache may have moved since), or else by its path
        found = open_run(path)
        ours = found.info.get("data_sha256") == CTR_SHA256 \
            or Path(str(found.config.data.data)).resolve() == Path(data).resolve()
    except LightFMPError:
        ours = False
    if not ours:
        raise LightFMPError(f"{path}: exists and is a run of other data than the demo's; choose another --out, or "
                            f"give --force to replace it")
