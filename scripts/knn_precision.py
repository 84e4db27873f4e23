"""How much comparison precision an encrypted k-nearest-neighbours classifier needs.

Replays, in numpy, the integer computation an FHE circuit would do for the
`knn_iris` fixture (scikit-learn KNeighborsClassifier(5) on iris, exported by
skl2onnx): inputs and training points quantized to b bits, squared distances as
integers, the k smallest selected by a network of compare-and-swap steps whose
comparison reads the distance difference at p bits (p = 16: exact), with or without
off-by-one reads (approximate rounding), labels swapped along with the distances, and
the majority vote of the k labels. Prints test accuracy and agreement with the float
model. Usage: python scripts/knn_precision.py   (numpy and onnx; run from the root)
"""
import numpy as np
import onnx
from onnx import numpy_helper

FIXTURE = "tests/fixtures/knn_iris/"
model = onnx.load(FIXTURE + "model.onnx")
init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
points = next(v for v in init.values() if v.ndim == 2).astype(np.float64)
labels = next(v for v in init.values() if v.ndim == 1 and v.size == points.shape[0])
k = int(next(v for n, v in init.items() if "TopK" in n)[0])
classes = int(labels.max()) + 1
calib = np.load(FIXTURE + "train.npy").astype(np.float64)
test_x = np.load(FIXTURE + "test_x.npy").astype(np.float64)
test_y = np.load(FIXTURE + "test_y.npy")


def vote(nearest):
    return np.bincount(nearest, minlength=classes).argmax()


float_pred = np.array(
    [vote(labels[np.argsort(((points - x) ** 2).sum(1), kind="stable")[:k]]) for x in test_x]
)


def transposition_pairs(n):
    return [(i, i + 1) for r in range(n) for i in range(r % 2, n - 1, 2)]


def top_k_labels(dist, step, rng):
    """Sorted lists of k, merged pairwise keeping the k smallest; returns the labels."""

    def cas(a, b, la, lb):
        r = np.floor((a - b) / step + 0.5)
        if rng is not None and rng.random() < 0.05:
            r += rng.choice([-1, 1])
        moved = max(r, 0) * step
        return (a - moved, b + moved, lb, la) if moved > 0 else (a - moved, b + moved, la, lb)

    def sort(v, lab):
        v, lab = list(v), list(lab)
        for i, j in transposition_pairs(len(v)):
            v[i], v[j], lab[i], lab[j] = cas(v[i], v[j], lab[i], lab[j])
        return v, lab

    lists = [sort(dist[i : i + k], labels[i : i + k]) for i in range(0, len(dist), k)]
    cur = lists[0]
    for b, lb in lists[1:]:
        a, la = cur
        v, lab = [], []
        for i in range(len(a)):
            j = len(a) - 1 - i
            if j < len(b):
                lo, _, l1, _ = cas(a[i], b[j], la[i], lb[j])
                v.append(lo)
                lab.append(l1)
            else:
                v.append(a[i])
                lab.append(la[i])
        cur = sort(v, lab)
    return np.array(cur[1][:k])


print(f"float model: accuracy {(float_pred == test_y).mean():.3f}")
for per_feature in (False, True):
    for bits in (2, 3, 4):
        lo = np.minimum(calib.min(0) if per_feature else calib.min(), 0)
        hi = calib.max(0) if per_feature else calib.max()
        scale = (hi - lo) / (2**bits - 1)
        zero = np.round(-lo / scale)
        quant = lambda v: np.clip(np.round(v / scale + zero), 0, 2**bits - 1)
        grid_points = quant(points)
        weight = np.round(np.broadcast_to(scale, (points.shape[1],)) ** 2 / np.min(scale) ** 2)
        max_dist = int((weight * (2**bits - 1) ** 2).sum())
        diff_bits = int(np.ceil(np.log2(2 * max_dist + 1)))
        for p in (6, 7, 16):
            for noisy in (False, True):
                rng = np.random.default_rng(1) if noisy else None
                step = 2.0 ** max(diff_bits - p, 0)
                pred = np.array(
                    [
                        vote(top_k_labels((weight * (quant(x) - grid_points) ** 2).sum(1), step, rng))
                        for x in test_x
                    ]
                )
                print(
                    f"{'per-feature' if per_feature else 'per-tensor '} grid, {bits}-bit inputs, "
                    f"distances up to {max_dist} ({diff_bits}-bit differences), comparisons at "
                    f"{p} bits{' with off-by-one reads' if noisy else ''}: accuracy "
                    f"{(pred == test_y).mean():.3f}, agreement with float {(pred == float_pred).mean():.3f}"
                )
