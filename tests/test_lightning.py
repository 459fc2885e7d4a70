"""canonstore.lightning.StoreDataModule: a store's splits in a Lightning Trainer, on the batch path."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

lightning = pytest.importorskip("lightning")

from canonstore import open_dataset, open_loader  # noqa: E402
from canonstore.lightning import StoreDataModule  # noqa: E402


class Recorder(lightning.LightningModule):
    """A one-weight model that keeps every training batch it is given, by epoch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.batches: dict[int, list[torch.Tensor]] = {}
        self.val_samples = 0

    def training_step(self, batch, index):
        x, y = batch[:2]
        self.batches.setdefault(self.current_epoch, []).append(x.detach().clone())
        return ((self.weight * x.mean() - y.mean()) ** 2).mean()

    def validation_step(self, batch, index):
        self.val_samples += batch[0].shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_a_trainer_gets_the_same_batches_each_epoch_as_open_loader(tiny_store):
    model, data = Recorder(), StoreDataModule(tiny_store, batch_size=64, seed=3, workers=1)
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    reference = open_loader(tiny_store, "train", 64, shuffle=True, drop_last=True, seed=3, device="cpu", workers=1)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        expected = [x for x, *_ in reference]
        assert len(model.batches[epoch]) == len(expected) > 1
        assert all(torch.equal(a, b) for a, b in zip(model.batches[epoch], expected))
    assert not torch.equal(model.batches[0][0], model.batches[1][0])  # a new order each epoch
    assert model.val_samples == 2 * len(open_dataset(tiny_store, "val"))  # every val window, each epoch


def test_each_rank_reads_its_share_from_the_trainers_rank_and_world(tiny_store):
    shares = {}
    for rank in (0, 1):
        data = StoreDataModule(tiny_store, batch_size=16, workers=1)
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2, strategy=SimpleNamespace(root_device="cpu"))
        train, val = data.train_dataloader(), data.val_dataloader()
        assert (train.sampler.rank, train.sampler.world_size) == (rank, 2)
        shares[rank] = (train.sampler.positions().numpy(), val.sampler.positions().numpy())
    samples = len(data.loader("val").dataset)
    assert len(shares[0][0]) == len(shares[1][0]) and not set(shares[0][0]) & set(shares[1][0])  # even, apart
    assert np.array_equal(np.sort(np.concatenate([shares[0][1], shares[1][1]])), np.arange(samples))  # val: once


def test_a_train_split_smaller_than_a_batch_is_refused_not_trained_on_silently(tiny_store):
    from canonstore.errors import StoreError

    samples = len(open_dataset(tiny_store, "train"))
    data = StoreDataModule(tiny_store, batch_size=samples + 1, workers=1)  # drop_last: no full batch
    with pytest.raises(StoreError, match=f"train split has {samples} samples .* fewer than batch_size {samples + 1}"):
        data.train_dataloader()
    assert len(data.val_dataloader()) == 1  # val keeps its partial batch: every sample is scored
