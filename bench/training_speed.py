"""Training speed: the engine (pipeline.training.loop.fit) against a minimal hand-written PyTorch loop
and against PyTorch Lightning, on digits and on a synthetic table, plus how epoch time grows
with the number of rows.

All variants train the same MLP (pipeline.models.build_network) with the same batch size, AdamW,
learning rate and weight decay, and validate once per epoch. The engine runs with a fixed number
of epochs and nothing the others lack: no schedule, no clipping, no early stopping.

    python -m bench.training_speed [--quick] [--repeats N] [--threads N]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.common import (
    Report,
    alternate,
    compose,
    markdown_table,
    median,
    parser,
    quiet,
    set_threads,
    spread,
)

TARGET_HAND = 1.10  # engine epoch time / hand loop epoch time, at most
TARGET_LIGHTNING = 2.0  # lightning epoch time / engine epoch time, at least


def engine_config(threads: int, *extra: str) -> Any:
    """The engine with everything the reference loops lack switched off."""
    return compose(
        f"train.threads={threads}",
        "train.device=cpu",
        "train.schedule=none",
        "train.warmup_epochs=0",
        "train.grad_clip=0",
        "train.compile=false",
        "train.class_weights=false",
        "train.label_smoothing=0",
        "train.early_stopping.patience=1000000",
        *extra,
    )


def synthetic(n_train: int, n_features: int = 50, seed: int = 0) -> Any:
    """A binary table with a linear signal and noise; validation has a sixth of the training
    rows."""
    from pipeline.training.tensors import TrainingData

    rng = np.random.default_rng(seed)
    n_val = max(200, n_train // 6)
    weights = rng.normal(size=n_features)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, n_features)).astype(np.float32)
        y = (x @ weights + rng.normal(scale=2.0, size=n) > 0).astype(np.int64)
        return x, y

    x_train, y_train = rows(n_train)
    x_val, y_val = rows(n_val)
    return TrainingData(x_train, y_train, x_val, y_val, "binary", 2)


def digits(threads: int) -> Any:
    from pipeline.stages.prepare import prepare

    cfg = engine_config(threads, "data=digits", "tracking.enabled=false")
    return prepare(cfg.data, cfg.seed).training_data()


def run_engine(cfg: Any, data: Any, epochs: int, seed: int = 0) -> dict[str, Any]:
    from pipeline.metrics import resolve_objective
    from pipeline.training.loop import fit

    objective = resolve_objective(None, None, data.task)
    result = fit(cfg.train, cfg.model, data, objective, seed, epochs=epochs)
    assert len(result.history) == epochs, "the engine stopped early; the comparison needs fixed epochs"
    return {"epoch_seconds": [h["epoch_seconds"] for h in result.history]}


def run_hand(cfg: Any, data: Any, epochs: int, seed: int = 0) -> dict[str, Any]:
    """The minimal loop: tensors in memory, randperm batches, AdamW, a validation pass per epoch."""
    import torch
    from torch.nn import functional as F

    from pipeline.models import build_network, network_spec

    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(data.x_train, dtype=np.float32))
    x_val = torch.as_tensor(np.asarray(data.x_val, dtype=np.float32))
    binary = data.task == "binary"
    y = torch.as_tensor(data.y_train, dtype=torch.float32 if binary else torch.long)
    y_val = torch.as_tensor(data.y_val, dtype=torch.float32 if binary else torch.long)
    spec = network_spec(cfg.model, data.task, x.shape[1], data.n_classes, None)
    net = build_network(spec)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if binary:
            return F.binary_cross_entropy_with_logits(out.squeeze(1), target)
        return F.cross_entropy(out, target)

    n, batch_size = x.shape[0], int(cfg.train.batch_size)
    epoch_seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        net.train()
        order = torch.randperm(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            loss = loss_fn(net(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            out = net(x_val)
            val_loss = float(loss_fn(out, y_val))
            pred = (out.squeeze(1) > 0).float() if binary else out.argmax(1)
            accuracy = float((pred == y_val).float().mean())
        assert np.isfinite(val_loss) and 0.0 <= accuracy <= 1.0
        epoch_seconds.append(time.perf_counter() - started)
    return {"epoch_seconds": epoch_seconds}


def lightning_available() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def run_lightning(cfg: Any, data: Any, epochs: int, seed: int = 0) -> dict[str, Any]:
    """Lightning as its documentation shows it: a LightningModule, DataLoaders over a
    TensorDataset, and a Trainer with its defaults except logging, checkpointing and the
    progress bar (which would write files and terminal output the others do not)."""
    import lightning as L
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from pipeline.models import build_network, network_spec

    quiet()  # Lightning sets its loggers to INFO when imported
    torch.manual_seed(seed)
    binary = data.task == "binary"
    x = torch.as_tensor(np.asarray(data.x_train, dtype=np.float32))
    x_val = torch.as_tensor(np.asarray(data.x_val, dtype=np.float32))
    y = torch.as_tensor(data.y_train, dtype=torch.float32 if binary else torch.long)
    y_val = torch.as_tensor(data.y_val, dtype=torch.float32 if binary else torch.long)
    spec = network_spec(cfg.model, data.task, x.shape[1], data.n_classes, None)
    lr, weight_decay = float(cfg.train.lr), float(cfg.train.weight_decay)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if binary:
            return F.binary_cross_entropy_with_logits(out.squeeze(1), target)
        return F.cross_entropy(out, target)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_network(spec)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            return loss_fn(self.net(xb), yb)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            xb, yb = batch
            out = self.net(xb)
            loss_fn(out, yb)
            pred = (out.squeeze(1) > 0).float() if binary else out.argmax(1)
            (pred == yb).float().mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)

    epoch_seconds: list[float] = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            epoch_seconds.append(time.perf_counter() - self.started)

    train_loader = DataLoader(TensorDataset(x, y), batch_size=int(cfg.train.batch_size), shuffle=True)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=8192)  # like the engine's chunks
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochTimer()],
    )
    trainer.fit(Module(), train_loader, val_loader)
    return {"epoch_seconds": epoch_seconds}


def compare(
    report: Report, label: str, cfg: Any, data: Any, epochs: int, repeats: int, with_lightning: bool
) -> None:
    runners = {"engine": run_engine, "hand loop": run_hand}
    if with_lightning:
        runners["lightning"] = run_lightning
    in_loop: dict[str, list[float]] = {name: [] for name in runners}

    def keep(name: str, returned: dict[str, Any], seconds: float) -> float:
        in_loop[name].append(median(returned["epoch_seconds"]))
        return seconds / epochs  # wall time of the whole call, per epoch

    print(
        f"\n{label}: {data.x_train.shape[0]} training rows, {data.x_train.shape[1]} features, "
        f"batch {cfg.train.batch_size}, {epochs} epochs per call",
        flush=True,
    )
    variants = {name: (lambda run=run: run(cfg, data, epochs)) for name, run in runners.items()}
    times = alternate(variants, repeats, warmup=1, measure=keep)
    engine = median(times["engine"])
    rows = []
    for name in runners:
        rows.append(
            [
                name,
                median(times[name]),
                spread(times[name]),
                median(in_loop[name]),
                median(times[name]) / engine,
            ]
        )
    report.section(
        f"{label}: seconds per epoch",
        f"{data.x_train.shape[0]} training rows x {data.x_train.shape[1]} features, batch "
        f"{cfg.train.batch_size}, {epochs} epochs per call, median of {repeats} alternating "
        "repeats.\n\n"
        + markdown_table(
            [
                "variant",
                "s/epoch (call wall / epochs)",
                "range",
                "s/epoch (in-loop median)",
                "vs engine",
            ],
            rows,
        ),
    )
    ratio = engine / median(times["hand loop"])
    report.headline(
        f"{label}: engine / hand loop epoch time",
        round(ratio, 3),
        f"<= {TARGET_HAND}",
        ratio <= TARGET_HAND,
    )
    if with_lightning:
        speedup = median(times["lightning"]) / engine
        report.headline(
            f"{label}: lightning / engine epoch time",
            round(speedup, 3),
            f">= {TARGET_LIGHTNING}",
            speedup >= TARGET_LIGHTNING,
        )


def growth(report: Report, cfg: Any, sizes: list[int], epochs: dict[int, int], repeats: int) -> None:
    datasets = {n: synthetic(n, seed=n) for n in sizes}
    variants = {f"{n}": (lambda n=n: run_engine(cfg, datasets[n], epochs[n])) for n in sizes}
    print(f"\nepoch time growth: {', '.join(map(str, sizes))} rows", flush=True)
    times = alternate(
        variants,
        repeats,
        warmup=1,
        measure=lambda name, returned, seconds: seconds / epochs[int(name)],
    )
    base = median(times[str(sizes[0])]) / sizes[0]
    rows = []
    for n in sizes:
        per_epoch = median(times[str(n)])
        rows.append(
            [
                n,
                epochs[n],
                per_epoch,
                spread(times[str(n)]),
                per_epoch / n * 1e6,
                per_epoch / n / base,
            ]
        )
    report.section(
        "Engine epoch time against rows (synthetic, 50 features)",
        "Validation rows are a sixth of the training rows; median of "
        f"{repeats} alternating repeats.\n\n"
        + markdown_table(
            [
                "train rows",
                "epochs per call",
                "s/epoch",
                "range",
                "us per row",
                f"per-row time vs {sizes[0]} rows",
            ],
            rows,
        ),
    )
    largest = median(times[str(sizes[-1])]) / sizes[-1] / base
    report.headline(
        f"per-row epoch time {sizes[-1]} vs {sizes[0]} rows",
        round(largest, 3),
        "~1 (linear)",
        0.5 <= largest <= 1.5,
    )


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quiet()
    set_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    cfg = engine_config(args.threads)
    report = Report(
        "training_speed",
        "Training speed: engine vs hand-written loop vs Lightning",
        args.quick,
        {
            "threads": args.threads,
            "repeats": repeats,
            "batch_size": int(cfg.train.batch_size),
            "hidden": list(cfg.model.hidden),
            "optimizer": cfg.train.optimizer,
        },
    )
    with_lightning = lightning_available()
    if not with_lightning:
        print("lightning not installed: pip install -e .[bench]", flush=True)
        report.note("lightning not installed (pip install -e .[bench]): the Lightning rows were skipped")

    table_rows = 20_000 if args.quick else 100_000
    compare(
        report,
        "digits",
        cfg,
        digits(args.threads),
        8 if args.quick else 30,
        repeats,
        with_lightning,
    )
    compare(
        report,
        f"synthetic {table_rows // 1000}k",
        cfg,
        synthetic(table_rows),
        1 if args.quick else 2,
        repeats,
        with_lightning,
    )
    sizes = [2_000, 10_000, 50_000] if args.quick else [10_000, 100_000, 1_000_000]
    epochs = {sizes[0]: 5, sizes[1]: 2, sizes[2]: 1}
    growth(report, cfg, sizes, epochs, repeats if args.quick else 3)
    report.note(
        "s/epoch (call wall / epochs) is the wall time of one whole training call divided by its "
        "epochs: setup (tensor conversion, network construction, the Trainer's own setup) is "
        "included and amortized. The in-loop median excludes it."
    )
    report.note(
        "Lightning's validation loader uses 8192-row batches like the engine; its training "
        "loader is the usual DataLoader(TensorDataset, shuffle=True)."
    )
    report.write()


if __name__ == "__main__":
    main()
