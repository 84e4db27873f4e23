"""How the k-nearest-neighbours input grid costs accuracy, averaged over splits.

Replays in numpy the integer computation of fhec's k-NN circuit (crates/quant/src/
knn.rs, knn_grid.rs) for scikit-learn's KNeighborsClassifier(5) on several datasets and
12 stratified 70/30 splits, and prints the mean test accuracy of the float model, of
the earlier grid (one scale, every feature clamped to the widest one's 2^b − 1 levels,
b the most bits whose comparisons fit 8 bits) and of the grid chosen now (a clamp per
feature, training points F times finer, the scale and F whose vote agrees most with the
float vote on the training set, within 8-bit comparisons). A last column is a design
study, not what fhec does: distances clipped exactly at the largest key the 8-bit
comparisons allow (only the nearest points need exact distances), which frees the grid
to be fine; its scale is chosen by leave-one-out agreement on the training set.
Usage: python scripts/knn_grid_study.py   (numpy and scikit-learn)
"""
import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

K = 5
MAX_COMPARISON_BITS = 8


def vote(codes, classes):
    return int(np.argmax(np.bincount(codes, minlength=classes)))


def float_predict(points, labels, xs, classes):
    out = []
    for x in xs:
        d = ((points - x) ** 2).sum(1)
        out.append(vote(labels[np.lexsort((np.arange(len(points)), d))[:K]], classes))
    return np.array(out)


def grid(points, labels, lo, hi, scale, factor, per_feature, classes):
    """(comparison bits, predict) of one grid."""
    zero = np.round(-lo / scale)
    top = np.maximum(np.round(hi / scale) + zero, 0)
    if not per_feature:
        top = np.full_like(top, top.max())
    at = np.clip(points / scale + zero, 0, top)
    r = np.round(factor * at)
    c = np.round(factor * (at ** 2).sum(1))
    hi_f, lo_f = c.copy(), c.copy()
    for j in range(points.shape[1]):
        g = lambda x: factor * x * x - 2 * r[:, j] * x
        hi_f += np.maximum(g(0), g(top[j]))
        mid = np.clip(np.floor(r[:, j] / factor), 0, top[j])
        lo_f += np.minimum(g(mid), g(np.minimum(mid + 1, top[j])))
    shift = lo_f.min()
    bits = int(2 * (classes * (hi_f - shift) + labels).max()).bit_length()

    def predict(xs):
        q = np.clip(np.round(xs / scale) + zero, 0, top)
        f = c[None, :] + (factor * q * q).sum(1)[:, None] - 2 * (q @ r.T)
        keys = classes * (f - shift) + labels[None, :]
        nearest = np.argsort(keys, axis=1, kind="stable")[:, :K]
        return np.array([vote(labels[row], classes) for row in nearest])

    return bits, predict


def accuracy(points, labels, test_x, test_y, strategy):
    classes = int(labels.max()) + 1
    lo, hi = points.min(0), points.max(0)
    widest = (hi - lo).max()
    if strategy == "before":
        for b in range(6, 0, -1):
            bits, predict = grid(points, labels, lo, hi, widest / (2 ** b - 1), 1, False, classes)
            if bits <= MAX_COMPARISON_BITS:
                return np.mean(predict(test_x) == test_y)
        return np.nan
    reference = float_predict(points, labels, points, classes)
    best, levels = None, 1.0
    while levels <= 63:
        for factor in (1, 2, 4, 8):
            bits, predict = grid(points, labels, lo, hi, widest / levels, factor, True, classes)
            if bits > MAX_COMPARISON_BITS:
                break
            score = ((predict(points) == reference).sum(), -bits, levels)
            if best is None or score > best[0]:
                best = (score, predict)
        levels += 0.5
    return np.mean(best[1](test_x) == test_y) if best else np.nan


def clipped_accuracy(points, labels, test_x, test_y):
    classes = int(labels.max()) + 1
    cap = (1 << (MAX_COMPARISON_BITS - 1)) // classes - 1
    lo, hi = points.min(0), points.max(0)

    def predict(xs, scale, leave_one_out):
        zero = np.round(-lo / scale)
        top = np.round(hi / scale) + zero
        q = lambda a: np.clip(np.round(a / scale) + zero, 0, top)
        d = ((q(xs)[:, None, :] - q(points)[None, :, :]) ** 2).sum(2)
        keys = (classes * np.minimum(d, cap) + labels[None, :]).astype(float)
        if leave_one_out:
            np.fill_diagonal(keys, np.inf)
        nearest = np.argsort(keys, axis=1, kind="stable")[:, :K]
        return np.array([vote(labels[row], classes) for row in nearest])

    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(2)
    np.fill_diagonal(d, np.inf)
    reference = np.array([vote(labels[row], classes) for row in np.argsort(d, axis=1, kind="stable")[:, :K]])
    widest = (hi - lo).max()
    scales = np.geomspace(widest, widest / 200, 80)
    agree = [(predict(points, s, True) == reference).sum() for s in scales]
    return np.mean(predict(test_x, scales[int(np.argmax(agree))], False) == test_y)


for name, load, standardize in [
    ("iris", load_iris, False),
    ("iris, standardized", load_iris, True),
    ("wine, standardized", load_wine, True),
    ("breast cancer, standardized", load_breast_cancer, True),
]:
    x, y = load(return_X_y=True)
    acc = {"float": [], "before": [], "now": [], "clipped (study)": []}
    for seed in range(12):
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
        if standardize:
            s = StandardScaler().fit(xtr)
            xtr, xte = s.transform(xtr), s.transform(xte)
        ytr = ytr.astype(np.int64)
        acc["float"].append(np.mean(float_predict(xtr, ytr, xte, int(ytr.max()) + 1) == yte))
        for strategy in ("before", "now"):
            acc[strategy].append(accuracy(xtr, ytr, xte, yte, strategy))
        acc["clipped (study)"].append(clipped_accuracy(xtr, ytr, xte, yte))
    print(f"{name:30s}", "  ".join(f"{k} {np.nanmean(v):.3f}" for k, v in acc.items()))
