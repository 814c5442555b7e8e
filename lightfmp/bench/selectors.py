"""Field selectors compared by `lightfmp bench`. Each one ranks every field (most useful first) from the shared,
already-encoded splits of one seed; the bench keeps the top K and retrains the backbone on them.

Implemented from the papers' descriptions (see docs/bench.md):
    random       K fields drawn uniformly per seed
    lightfmp     hard-concrete gates on a subset, prune, continue (lightfmp.pipeline.run); -fulldata: subset 1.0
    autofield    Wang et al., WWW 2022: keep/drop Gumbel-softmax controller per field, bilevel (first order)
    lpfs         Guo et al., 2022: polarizing smoothed-L0 gate x^2/(x^2+eps), eps decaying, proximal L1 on x
                 (autofield and lpfs are gate modules, lightfmp.gates, trained by training.fit)
    sfs          Wang et al., SIGIR 2023 (single-shot): |dL/dmask| at initialisation, SNIP-style
    shark        Zhang et al., CIKM 2023: first-order Taylor estimate of the loss change of permuting a field
    permutation  Breiman 2001 / Fisher et al. 2019: AUC drop of the trained full model when a field is shuffled
    gbdt         gradient-boosted trees on label-encoded fields, permutation importance per field
    lasso        L1 logistic regression on one-hot fields; fields ranked by when they enter the path, then norm
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..dataset import Dataset
from ..errors import LightFMPError
from ..gates import AutoFieldGate, Gate, LPFSGate
from ..metrics import roc_auc
from ..models import build_model
from ..pipeline import final_eval, phase_plan, resolve_device, run
from ..progress import Reporter
from ..schema import PAD_ID
from ..scratch import scratch_dir
from ..training import fit, predict

GATE_METHODS = ("lightfmp", "lightfmp-fulldata", "autofield", "lpfs")


@dataclass
class Context:
    """One seed's shared state: config, identical encoded splits, and a cache (the trained full model)."""
    cfg: RunConfig
    data: Dataset
    quick: bool = False
    cache: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.data.schema.names

    @property
    def device(self) -> str:
        return resolve_device(self.cfg.train.device)


@dataclass
class Selection:
    ranking: list[str]              # every field, most useful first
    seconds: float                  # selection cost (for post-hoc methods: includes training the full model)
    result: dict | None = None      # a method that trains its own final model (lightfmp) puts its metrics here


def _need_sklearn():
    if importlib.util.find_spec("sklearn") is None:
        raise LightFMPError("this method needs scikit-learn: pip install -e '.[bench]'")


def _rank(names: list[str], score) -> list[str]:
    """Names by descending score; ties keep schema order so rankings are deterministic."""
    score = [float(s) for s in score]
    return [names[i] for i in sorted(range(len(names)), key=lambda i: (-score[i], i))]


# --------------------------------------------------------------------------------------------------------------
def train_fields(cfg: RunConfig, data: Dataset, fields: list[str], epochs: int | None = None,
                 quiet: bool = True) -> tuple[object, dict]:
    """Train the configured backbone from scratch on `fields` only (no gates), on the whole training split, and
    evaluate it. The shared "retrain on the selected fields" step of every selection method."""
    reporter = Reporter(quiet)
    device = resolve_device(cfg.train.device)
    schema = data.schema.subset(fields)
    torch.manual_seed(cfg.init_seed)
    model = build_model(cfg.model.backbone, schema, cfg.model, trains_on=device)
    valid = data.split_rows("valid").select(schema.names)
    t0 = time.perf_counter()
    fit(model, data.split_rows("train").select(schema.names), valid,
        cfg.train, reporter, "train", device, **phase_plan(cfg, epochs))
    seconds = time.perf_counter() - t0
    res = final_eval(model, data, device, schema.names)
    res.update(seconds=seconds, params=model.num_params(), fields=list(schema.names))
    return model, res


def full_model(ctx: Context) -> tuple[object, dict]:
    """The backbone trained on all fields; shared by `full`, `shark` and `permutation` within a seed."""
    if "full" not in ctx.cache:
        ctx.cache["full"] = train_fields(ctx.cfg, ctx.data, ctx.names)
    return ctx.cache["full"]


def select_random(ctx: Context, k: int) -> Selection:
    rng = np.random.default_rng(ctx.cfg.data.seed + 104729)
    return Selection([ctx.names[i] for i in rng.permutation(len(ctx.names))], 0.0)


def select_lightfmp(ctx: Context, k: int, subset: float | None = None) -> Selection:
    cfg = ctx.cfg.but(keep=k, threshold=None, target_k=None, subset=subset if subset is not None else ctx.cfg.train.subset)
    with scratch_dir("lightfmp-bench-") as tmp:
        m = run(cfg, f"{tmp}/run", force=True, quiet=True, data=ctx.data)  # the seed's data, not read again
    # selection: phase 1, the pruning steps, and phase 3's first epoch (on every field phase 1 left open, for the
    # rule to decide on); the rest of phase 3 trains the kept fields, as the other methods' retraining does
    sel = m["phases"]["pretrain"]["seconds"] + m["phases"]["prune"]["seconds"] \
        + m["phases"]["continue"].get("first_epoch_seconds", 0.0)
    order = m.get("selection", {}).get("search", {}).get("order")  # the forward order, as far as it was searched
    gates, la = m["gates"], m.get("log_alpha", {})
    ranking = order or [n for n in sorted(ctx.names, key=lambda n: (-gates[n], -la.get(n, 0.0)))]
    result = {"valid": m["valid"], "test": m["test"], "seconds": m["seconds_total"] - sel,
              "params": m["params"]["after"], "fields": m["fields"]["kept"]}
    return Selection(ranking, sel, result)


def select_lightfmp_fulldata(ctx: Context, k: int) -> Selection:
    return select_lightfmp(ctx, k, subset=1.0)


# --- gate modules trained by training.fit (AutoField, LPFS) -----------------------------------------------------
def _gate_selection(ctx: Context, gate: Gate) -> Selection:
    """Train the backbone through `gate` on the rows Light-FMP's selection reads — --subset of the training split
    for --pretrain-epochs (the phase-1 plan), then one pass over the other training rows (Light-FMP's phase 3's
    first epoch, before its rule) — with one schedule (temperature, epsilon) over both, and rank fields by the
    gate's scores. No validation pass: the search reads no validation rows (it keeps its last epoch), so a pass
    per epoch would only add to its seconds."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    sub, rest = ctx.data.subset(cfg.train.subset, cfg.data.seed)
    if len(rest) == 0:  # --subset 1.0: Light-FMP's first epoch reads the whole training split again
        rest = ctx.data.split_rows("train")
    torch.manual_seed(cfg.init_seed)
    model = build_model(cfg.model.backbone, ctx.data.schema, cfg.model, gate=gate, trains_on=ctx.device)
    epochs = cfg.train.pretrain_epochs
    first = epochs * len(sub) / (epochs * len(sub) + len(rest))  # the subset's share of the rows read
    fit(model, sub, None, cfg.train, label=f"{type(gate).__name__} search", device=ctx.device,
        **phase_plan(cfg, epochs, select_best=False), span=(0.0, first))
    fit(model, rest, None, cfg.train, label=f"{type(gate).__name__} search (other rows)", device=ctx.device,
        **phase_plan(cfg, 1, select_best=False, seed_offset=1), span=(first, 1.0))
    return Selection(_rank(ctx.names, model.gate.scores().cpu()), time.perf_counter() - t0)


def select_autofield(ctx: Context, k: int) -> Selection:
    """AutoField: per field a keep/drop Gumbel-softmax controller with an annealed temperature, trained on held-out
    rows (bilevel, first order; joint steps with --gate-holdout 0). Rank by P(keep)."""
    return _gate_selection(ctx, AutoFieldGate(len(ctx.names)))


def select_lpfs(ctx: Context, k: int) -> Selection:
    """LPFS: gate x^2 / (x^2 + eps) with eps decaying so gates polarise to {0, 1}, a proximal L1 step on x after
    each joint update so useless fields reach exactly 0. Rank by the gate, i.e. by |x|."""
    return _gate_selection(ctx, LPFSGate(len(ctx.names)))


# --- gradient / Taylor / permutation saliency ------------------------------------------------------------------
def _score_sample(ctx: Context, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of a seeded sample of at most `max_rows` training rows, in stored order."""
    train = ctx.data.split_rows("train")
    n = len(train)
    rng = np.random.default_rng(ctx.cfg.data.seed + 3)
    return train.take(np.sort(rng.permutation(n)[:min(n, max_rows)])).arrays()


@torch.no_grad()
def _calibrate(model, x: np.ndarray, y: np.ndarray, device: str) -> None:
    """Shift the output bias so the mean prediction equals the label rate on these rows (Newton on one scalar)."""
    model.eval()
    logits = torch.from_numpy(np.asarray(predict(model, x, device=device))).clamp(1e-7, 1 - 1e-7).logit()
    target, shift = float(y.mean()), 0.0
    for _ in range(30):
        p = torch.sigmoid(logits + shift)
        shift -= float(p.mean() - target) / max(float((p * (1 - p)).mean()), 1e-6)
    model.out.bias.add_(shift)


def select_sfs(ctx: Context, k: int, inits: int = 5) -> Selection:
    """SFS: at initialisation, the gradient of the loss wrt an all-ones field mask, summed over a few batches,
    i.e. |dL/dc_f| on those rows (connection sensitivity). The output bias is first shifted so the mean
    prediction matches the label rate: otherwise the calibration error shared by all fields dominates the gradient.
    A field's score at one random init is a random projection of its per-value residuals and can cancel by
    chance, so it is averaged over a few inits (still no training)."""
    t0 = time.perf_counter()
    cfg, device = ctx.cfg, ctx.device
    x, y = _score_sample(ctx, 20 * cfg.train.batch_size)
    total = torch.zeros(len(ctx.names))
    for init in range(inits):
        torch.manual_seed(cfg.data.seed * 1000 + init)
        model = build_model(cfg.model.backbone, ctx.data.schema, cfg.model).to(device)
        _calibrate(model, x, y, device)
        model.eval()
        score = torch.zeros(len(ctx.names))
        for i in range(0, len(y), cfg.train.batch_size):
            mask = torch.ones(len(ctx.names), device=device, requires_grad=True)
            logits = model(torch.from_numpy(x[i:i + cfg.train.batch_size]).to(device), mask)
            target = torch.from_numpy(y[i:i + cfg.train.batch_size]).to(device)
            loss = F.binary_cross_entropy_with_logits(logits, target)
            (g,) = torch.autograd.grad(loss, mask)
            score += g.cpu()  # signed: noise fields' batch gradients cancel, a real field's add up
        total += score.abs() / score.abs().sum().clamp_min(1e-12)  # each init's saliencies sum to 1
    return Selection(_rank(ctx.names, total), time.perf_counter() - t0)


def select_shark(ctx: Context, k: int) -> Selection:
    """SHARK (its F-Permutation): on the trained full model, reading another row's value of field f changes the
    loss by about g_f . (e_f - e'_f) (first-order Taylor, g_f = dL/de_f at the row's own embedding e_f), whose
    expectation over the row read is g_f . (e_f - E[e_f]); a field's importance is the sum over the validation rows
    of |g_f . (e_f - E[e_f])| (its first-order term's change added inside), E[.] the mean over those rows, as the
    authors' code (shipped with the ERASE benchmark) scores it."""
    model, res = full_model(ctx)
    t0 = time.perf_counter()
    device, bs = ctx.device, ctx.cfg.train.batch_size
    model.eval()
    x, y = ctx.data.split_rows("valid").arrays()
    batches = [(torch.from_numpy(x[i:i + bs]).to(device), torch.from_numpy(y[i:i + bs]).to(device))
               for i in range(0, len(y), bs)]
    mean_e, mean_l = 0.0, 0.0  # the mean embedding (and first-order term) of each field over the rows
    with torch.no_grad():
        for xb, _ in batches:
            e, l = model.embedding(xb)
            mean_e = mean_e + e.double().sum(0) / len(y)
            mean_l = mean_l + l.double().sum(0) / len(y) if l is not None else None
    score = torch.zeros(len(ctx.names), dtype=torch.float64)
    for xb, yb in batches:
        emb, lin = model.embedding(xb)
        emb.retain_grad()
        if lin is not None:
            lin.retain_grad()
        # sum, not mean: per-sample gradients keep their own scale
        F.binary_cross_entropy_with_logits(model.interact(emb, lin), yb, reduction="sum").backward()
        s = (emb.grad.double() * (emb.detach().double() - mean_e)).sum(-1)
        if lin is not None:
            s = s + lin.grad.double() * (lin.detach().double() - mean_l)
        score += s.abs().sum(0).cpu()
        model.zero_grad(set_to_none=True)
    return Selection(_rank(ctx.names, score), res["seconds"] + time.perf_counter() - t0)


def select_permutation(ctx: Context, k: int) -> Selection:
    """Permutation importance: shuffle one field's slot columns in the validation rows (all its slots together)
    and measure the AUC drop of the trained full model; averaged over repeats."""
    model, res = full_model(ctx)
    t0 = time.perf_counter()
    valid = ctx.data.split_rows("valid")
    xv, yv = valid.arrays()
    base = roc_auc(yv, predict(model, xv, device=ctx.device))
    rng = np.random.default_rng(ctx.cfg.data.seed + 5)
    repeats = 1 if ctx.quick else 3
    score = []
    for name in ctx.names:
        a, b = valid.slots[name]
        drops = []
        for _ in range(repeats):
            xp = xv.copy()
            xp[:, a:b] = xv[rng.permutation(len(xv)), a:b]
            drops.append(base - roc_auc(yv, predict(model, xp, device=ctx.device)))
        score.append(np.mean(drops))
    return Selection(_rank(ctx.names, score), res["seconds"] + time.perf_counter() - t0)


# --- classical baselines (scikit-learn) ------------------------------------------------------------------------
def select_gbdt(ctx: Context, k: int) -> Selection:
    """Histogram GBDT on label-encoded fields (each field's first slot id), permutation importance (AUC) on
    validation rows; high-cardinality codes (> 255) enter as ordinal numbers since HGB bins categories."""
    _need_sklearn()
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    t0 = time.perf_counter()
    schema = ctx.data.schema
    valid = ctx.data.split_rows("valid")
    first = [valid.slots[n][0] for n in ctx.names]
    xt, yt = _score_sample(ctx, 20000 if ctx.quick else 100000)
    xt = xt[:, first].astype(np.float64)
    cat = np.array([f.vocab_size <= 255 for f in schema.fields])
    clf = HistGradientBoostingClassifier(max_iter=50 if ctx.quick else 200, categorical_features=cat,
                                         early_stopping=False, random_state=ctx.cfg.data.seed)
    clf.fit(xt, yt)
    xv, yv = valid.take(np.arange(min(len(valid), 5000 if ctx.quick else 20000))).arrays()
    pi = permutation_importance(clf, xv[:, first].astype(np.float64), yv, scoring="roc_auc",
                                n_repeats=2 if ctx.quick else 5, random_state=ctx.cfg.data.seed)
    return Selection(_rank(ctx.names, pi.importances_mean), time.perf_counter() - t0)


def one_hot(schema, ids: np.ndarray):
    """Sparse one-hot [rows, sum of vocab sizes]; multi-hot slots add a 1 per real id (padding skipped)."""
    import scipy.sparse as sp
    sizes = np.array([f.vocab_size for f in schema.fields])
    offsets = np.cumsum(sizes) - sizes
    slot_field = np.array(schema.slot_field_index())
    multi = np.array([schema.fields[f].kind == "multi_hot" for f in slot_field])
    cols = ids.astype(np.int64) + offsets[slot_field][None, :]
    keep = ~(multi[None, :] & (ids == PAD_ID))
    r = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    m = sp.csr_matrix((np.ones(int(keep.sum())), (r[keep], cols[keep])), shape=(len(ids), int(sizes.sum())))
    m.sum_duplicates()
    return m, offsets, sizes


def select_lasso(ctx: Context, k: int) -> Selection:
    """L1 logistic regression on one-hot fields along a path of growing C: a field ranks higher the earlier (the
    stronger the penalty) one of its coefficients becomes non-zero; ties by the L2 norm of its coefficients."""
    _need_sklearn()
    from sklearn.linear_model import LogisticRegression
    import sklearn
    # scikit-learn 1.8 deprecated penalty= in favour of l1_ratio
    l1 = {"l1_ratio": 1.0} if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8) else \
        {"penalty": "l1"}
    t0 = time.perf_counter()
    x, y = _score_sample(ctx, 20000 if ctx.quick else 100000)
    xs, offsets, sizes = one_hot(ctx.data.schema, x)
    n = len(ctx.names)
    entered = np.full(n, np.inf)
    norms = np.zeros(n)
    for step, c in enumerate(np.logspace(-3, 0, 5 if ctx.quick else 7)):
        # liblinear shuffles the coordinates it visits: seeded, or the ranking moves from run to run
        clf = LogisticRegression(C=c, solver="liblinear", max_iter=200, random_state=ctx.cfg.data.seed, **l1)
        clf.fit(xs, y)
        w = clf.coef_.ravel()
        norms = np.array([np.linalg.norm(w[o:o + s]) for o, s in zip(offsets, sizes)])
        entered = np.where((norms > 0) & np.isinf(entered), step, entered)
    order = sorted(range(n), key=lambda i: (entered[i], -norms[i], i))
    return Selection([ctx.names[i] for i in order], time.perf_counter() - t0)


SELECTORS = {
    "random": select_random,
    "lightfmp": select_lightfmp,
    "lightfmp-fulldata": select_lightfmp_fulldata,
    "autofield": select_autofield,
    "lpfs": select_lpfs,
    "sfs": select_sfs,
    "shark": select_shark,
    "permutation": select_permutation,
    "gbdt": select_gbdt,
    "lasso": select_lasso,
}
METHODS = ("full", *SELECTORS)
