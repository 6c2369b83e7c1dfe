"""Which validation loss ranks a search's trials by how well they do on unseen people?

For every trial of finished demo searches (`run_search.py --out DIR`): its best checkpoint's
class-weighted CE (the paper's, training class weights) and class-balanced CE on the validation
split, and its volume accuracy and balanced slice accuracy on the test split. A diagnostic of the
two rankings (Spearman correlation, and the trials each would put in the top ten); nothing is
tuned on the test split.

    python benchmarks/objective_ranking.py demo_output_seed0 demo_output_seed1
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from mri_tune.data.store import SliceStore
from mri_tune.results.evaluate import evaluate_probabilities
from mri_tune.results.selection import scores
from mri_tune.results.trials import load_trials
from mri_tune.training.checkpoint import load_checkpoint
from mri_tune.training.inference import predict_proba


def trial_rows(run: Path) -> list[tuple[float, float, float, float]]:
    """(weighted val CE, balanced val CE, test volume accuracy, test balanced slice accuracy)
    of every finished trial of the demo search in `run`."""
    store = SliceStore(run / "sample_store_32.h5")
    train, validation, test = (store.load_split(s) for s in ("train", "validation", "test"))
    rows = []
    for trial in load_trials(run / "ray" / "mri_tune_demo"):
        if not trial.finished_ok:
            continue
        model = load_checkpoint(Path(trial.checkpoint)).model
        losses = scores(predict_proba(model, validation.images), validation.labels.numpy(),
                        validation.volume.numpy(), train.labels.numpy(), len(store.classes))
        ev = evaluate_probabilities(predict_proba(model, test.images), test.labels.numpy(),
                                    test.volume.numpy(), tuple(store.classes))
        recalls = [1.0 - e for e in ev.slice_class_error.values() if e is not None]
        rows.append((losses["weighted_ce"], losses["balanced_ce"], ev.volume_accuracy,
                     float(np.mean(recalls))))
    return rows


def main() -> None:
    torch.set_num_threads(1)
    for run in sys.argv[1:]:
        rows = np.array(trial_rows(Path(run)))  # (trials, 4)
        print(f"{run}: {len(rows)} trials")
        for column, name in ((0, "weighted"), (1, "balanced")):
            loss, top = rows[:, column], np.argsort(rows[:, column])[:10]
            print(f"  {name}: Spearman(loss, test volume accuracy) "
                  f"{spearmanr(loss, rows[:, 2])[0]:+.2f}, (loss, test balanced slice accuracy) "
                  f"{spearmanr(loss, rows[:, 3])[0]:+.2f}; its top ten: mean volume accuracy "
                  f"{rows[top, 2].mean():.3f}, trials {sorted(top.tolist())}")


if __name__ == "__main__":
    main()
