"""Train the sample model: a scikit-learn Ridge regression on synthetic data.

Deterministic (seeded numpy data, no downloads), so tests can recompute the
expected predictions and a re-run produces the same model.

    python sample/train.py --out sample/models/sklearn_regression_model.pkl
"""
from __future__ import annotations

import argparse
import os

import joblib
import numpy as np
from sklearn.linear_model import Ridge

N_FEATURES = 10
N_SAMPLES = 442  # the size of the diabetes set the original sample used


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic linear data with noise: X ~ U(0, 10), y = X @ w + b + eps."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 10.0, size=(N_SAMPLES, N_FEATURES))
    w = rng.normal(50.0, 30.0, size=N_FEATURES)
    y = X @ w + 150.0 + rng.normal(0.0, 10.0, size=N_SAMPLES)
    return X, y


def train(alpha: float = 0.1, seed: int = 0) -> Ridge:
    X, y = make_data(seed)
    return Ridge(alpha=alpha).fit(X, y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="path of the joblib pickle to write")
    p.add_argument("--alpha", type=float, default=0.1, help="Ridge regularisation strength")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    args = p.parse_args(argv)
    model = train(args.alpha, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    joblib.dump(model, args.out)
    print(f"wrote {args.out} (alpha={args.alpha}, seed={args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
