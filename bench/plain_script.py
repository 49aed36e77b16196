"""The script a user would write instead of this pipeline, for bench/vs_plain.py to time against it.

Optuna with TPE and a median pruner, one nested MLflow run per trial with per-epoch log_metric,
then the best parameters retrained with early stopping, logged as a pyfunc with its scaler,
registered, and given the `champion` alias. Same data, splits, search space and budgets as
`make pipeline candidates=[network]` on breast_cancer.

    python bench/plain_script.py --tracking-uri sqlite:///plain.db --trials 12 --epochs 30
"""

import argparse
import copy

import mlflow
import numpy as np
import optuna
import torch
from mlflow import MlflowClient
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def make_net(n_in, hidden, dropout, activation):
    layers = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, 1))


def fit(params, data, epochs, seed, trial=None, patience=None):
    """Train; report val AUC each epoch (trial: prune; patience: stop early, keep the best weights)."""
    torch.manual_seed(seed)
    x_train, y_train, x_val, y_val = data
    net = make_net(x_train.shape[1], params["hidden"], params["dropout"], params["activation"])
    opt = torch.optim.AdamW(net.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn, best, best_state, waited = nn.BCEWithLogitsLoss(), -1.0, None, 0
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(x_train)).split(params["batch_size"]):
            opt.zero_grad()
            loss = loss_fn(net(x_train[idx]).squeeze(1), y_train[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            auc = roc_auc_score(y_val.numpy(), net(x_val).squeeze(1).numpy())
        mlflow.log_metrics({"train_loss": loss.item(), "val_roc_auc": auc}, step=epoch)
        if auc > best:
            best, best_state, waited = auc, copy.deepcopy(net.state_dict()), 0
        else:
            waited += 1
        if trial is not None:
            trial.report(auc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        if patience is not None and waited >= patience:
            break
    net.load_state_dict(best_state)
    return net, best


class Classifier(mlflow.pyfunc.PythonModel):
    def __init__(self, net, scaler):
        self.net, self.scaler = net, scaler

    def predict(self, context, model_input):
        x = torch.tensor(
            self.scaler.transform(np.asarray(model_input, dtype=np.float32)), dtype=torch.float32
        )
        with torch.no_grad():
            proba = torch.sigmoid(self.net(x).squeeze(1)).numpy()
        return {"prediction": (proba >= 0.5).astype(int), "proba_1": proba}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--final-epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("plain")

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=args.seed
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=args.seed
    )
    scaler = StandardScaler().fit(x_train)
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    data = (
        as_tensor(scaler.transform(x_train)),
        as_tensor(y_train),
        as_tensor(scaler.transform(x_val)),
        as_tensor(y_val),
    )

    def objective(trial):
        params = {
            "lr": trial.suggest_float("lr", 3e-4, 3e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "hidden": [
                trial.suggest_int(f"width_{i}", 16, 256, log=True)
                for i in range(trial.suggest_int("n_layers", 1, 3))
            ],
            "dropout": trial.suggest_float("dropout", 0.0, 0.4),
            "activation": trial.suggest_categorical("activation", ["relu", "gelu", "silu"]),
        }
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.log_params(trial.params)
            _, best = fit(params, data, args.epochs, args.seed, trial=trial)
            mlflow.log_metric("best_val_roc_auc", best)
        return best

    with mlflow.start_run(run_name="plain script"):
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=args.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3),
        )
        study.optimize(objective, n_trials=args.trials)
        best = dict(study.best_params)
        best["hidden"] = [best.pop(f"width_{i}") for i in range(best.pop("n_layers"))]
        mlflow.log_params({f"best_{k}": v for k, v in best.items()})
        net, val_auc = fit(best, data, args.final_epochs, args.seed, patience=args.patience)
        proba = Classifier(net, scaler).predict(None, x_test)["proba_1"]
        mlflow.log_metrics({"val_roc_auc": val_auc, "test_roc_auc": roc_auc_score(y_test, proba)})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Classifier(net, scaler),
            input_example=x_train[:5],
            registered_model_name="plain",
        )
        MlflowClient().set_registered_model_alias("plain", "champion", info.registered_model_version)
    print(f"best val roc_auc {val_auc:.4f}, registered plain v{info.registered_model_version}")


if __name__ == "__main__":
    main()
