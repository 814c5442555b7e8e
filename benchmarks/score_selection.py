"""Score a run's kept fields against a synthetic set's truth.json.

    python benchmarks/score_selection.py RUN TRUTH.json
An informative field counts as found when it or one of its redundant copies is kept."""
import json
import sys


def score(metrics: dict, truth: dict) -> dict:
    kept = set(metrics["fields"]["kept"])
    copies = {}
    for copy, src in truth["redundant"].items():
        copies.setdefault(src, set()).add(copy)
    found = [f for f in truth["informative"] if f in kept or copies.get(f, set()) & kept]
    noise_dropped = [f for f in truth["noise"] if f not in kept]
    return {"informative_found": len(found), "informative": len(truth["informative"]),
            "missed": sorted(set(truth["informative"]) - set(found)),
            "noise_dropped": len(noise_dropped), "noise": len(truth["noise"]),
            "noise_kept": sorted(set(truth["noise"]) & kept), "kept": len(kept)}


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        sys.exit(print(__doc__))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(f"{sys.argv[1]}/metrics.json") as fm, open(sys.argv[2]) as ft:
        m, t = json.load(fm), json.load(ft)
    print(json.dumps({**score(m, t), "test_auc": m["test"]["auc"], "seconds_total": m["seconds_total"]}))
