"""PDFGCDataModule: built from the real Hydra config tree for each stage's dataset, batches follow the dataset's
contract, worker-safe and deterministic, and the training loader is the resumable stream (a loader started at
position p yields exactly what the uninterrupted one yields from sample p on)."""
import pytest
import torch

from pdfgc.data.contract import validate_batch
from pdfgc.data.stage_datasets import LipDataset, PoseDataset
from pdfgc.data.synthetic import SyntheticSource
from pdfgc.errors import UserError
from pdfgc.train.datamodule import PDFGCDataModule, build_source

SRC = dict(_target_="pdfgc.data.synthetic.SyntheticSource", image_size=56, num_identities=10, num_frames=20)


def _compose(stage, *extra):
    from pdfgc.train.config import compose

    return compose([f"stage={stage}", "model=tiny", "data.train_length=4", "data.val_length=2",
                    "data.batch_size=2", "data.train_source.num_frames=30", "data.train_source.num_identities=20",
                    *extra])


@pytest.mark.parametrize("stage", ["motion", "lip", "eye"])
def test_config_builds_and_batches_follow_contract(stage):
    from hydra.utils import instantiate

    from pdfgc.stages import STAGES

    cfg = _compose(stage)
    assert cfg.data.image_size == cfg.model.image_size  # one source of truth
    dataset = STAGES[stage].DATASET
    dm = instantiate(cfg.data, dataset=dataset, _recursive_=False)
    assert isinstance(dm, PDFGCDataModule)
    batch = next(iter(dm.train_dataloader()))
    assert validate_batch(dataset, batch, cfg.model.image_size, num_offsets=5, window=5) == 2
    val = next(iter(dm.val_dataloader()))
    validate_batch(dataset, val, cfg.model.image_size)
    # validation identities are the held-out ones
    train_ids = {dm.train_source.identity(i) for i in range(len(dm.train_source))}
    assert set(val["identity"].tolist()).isdisjoint(train_ids)


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_workers_give_the_same_stream_and_a_position_resumes_it():
    kw = dict(dataset=PoseDataset, image_size=56, batch_size=2, train_source=SRC, train_length=4, seed=9)
    b0 = _batches(PDFGCDataModule(num_workers=0, **kw).train_dataloader(), 4)
    b1 = _batches(PDFGCDataModule(num_workers=2, **kw).train_dataloader(), 4)
    for x, y in zip(b0, b1):
        assert torch.equal(x["frames"], y["frames"]) and torch.equal(x["pose"], y["pose"])
    # the stream runs past the nominal length with fresh samples (stage datasets are unbounded)
    assert not torch.equal(b0[2]["frames"], b0[0]["frames"])
    # a loader positioned at sample 4 (iteration 2 x batch 2) continues the stream exactly
    resumed = _batches(PDFGCDataModule(num_workers=0, position=lambda: 4, **kw).train_dataloader(), 2)
    for x, y in zip(resumed, b0[2:]):
        assert torch.equal(x["frames"], y["frames"])
    # limit cycles over the first items (debug=overfit)
    lim = _batches(PDFGCDataModule(num_workers=0, limit=2, **kw).train_dataloader(), 2)
    assert torch.equal(lim[0]["frames"], lim[1]["frames"])


def test_dataset_options_reach_the_dataset():
    dm = PDFGCDataModule(dataset=LipDataset, dataset_options={"num_offsets": 3, "min_gap": 2}, image_size=56,
                         batch_size=2, train_source=SRC)
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape[:2] == (2, 3)
    offsets = batch["frame_idx"]
    assert ((offsets[:, 1:] - offsets[:, :-1]) >= 2).all()


def test_errors_are_clear():
    with pytest.raises(UserError, match="image_size must be a positive integer.*'\\?\\?\\?'"):
        PDFGCDataModule(dataset=PoseDataset, image_size="???", train_source=SyntheticSource(image_size=56))
    with pytest.raises(UserError, match="must be a StageDataset class"):
        PDFGCDataModule(dataset="pose", image_size=56, train_source=SyntheticSource(image_size=56))
    dm = PDFGCDataModule(dataset=PoseDataset, image_size=56, train_source=SyntheticSource(image_size=64))
    with pytest.raises(ValueError, match="image_size is 64 but the model expects 56"):
        dm.setup()
    with pytest.raises(UserError, match="_target_"):
        build_source({"image_size": 56})
