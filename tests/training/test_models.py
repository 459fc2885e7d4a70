"""Models: shapes, sphere padding, persistence and residual wiring, climatology fitting."""

import cftime
import numpy as np
import pandas as pd
import pytest
import torch

from canonstore.errors import ConfigError
from canonstore.formats import open_store
from canonstore.formats.spec import normalisation_scale
from canonstore.training.baselines import (
    Climatology,
    Persistence,
    basis_size,
    reference_climatology,
    supported_harmonics,
    time_basis,
)
from canonstore.training.models import Rollout, build_model
from canonstore.training.nets import MLP, UNet


class FakeDataset:
    def __init__(self, inputs, targets, space=(8, 16), leads=(1,), longitude_periodic=True):
        self.input_channels, self.target_channels, self.sample_space, self.leads = inputs, targets, space, leads
        self.longitude_periodic = longitude_periodic


def run(model, residual=True, **args):
    defaults = {
        "unet": {"width": 4, "depth": 2},
        "mlp": {"width": 8, "layers": 1},
        "persistence": {},
        "climatology": {"annual_harmonics": 1, "diurnal_harmonics": 1},
    }
    return {"model": model, "model_args": {**defaults[model], **args}, "residual": residual}


@pytest.mark.parametrize("grid", [(8, 16), (7, 12)])  # 7x12: padded up to a multiple of 4 and cropped back
def test_unet_shapes(grid):
    model = UNet(5, 3, width=4, depth=2, periodic=True)
    assert model(torch.randn(2, 5, *grid)).shape == (2, 3, *grid)


def test_unet_is_periodic_in_longitude():
    """Rolling the input along longitude rolls the output: the dateline is not an edge."""
    torch.manual_seed(0)
    model = UNet(2, 2, width=4, depth=2, periodic=True).eval()
    x = torch.randn(1, 2, 8, 16)
    with torch.no_grad():
        shifted = model(torch.roll(x, 4, dims=-1))
        assert torch.allclose(shifted, torch.roll(model(x), 4, dims=-1), atol=1e-5)
        # ...but not along latitude, where a pole is an edge
        assert not torch.allclose(model(torch.roll(x, 2, dims=-2)), torch.roll(model(x), 2, dims=-2), atol=1e-3)


def test_mlp_works_on_any_space():
    model = MLP(4, 2, width=8, layers=2)
    assert model(torch.randn(3, 4, 10)).shape == (3, 2, 10)
    assert model(torch.randn(3, 4, 5, 6)).shape == (3, 2, 5, 6)


def test_persistence_takes_each_target_from_the_input_at_t():
    dataset = FakeDataset(["a@t-1", "b@t-1", "a", "b", "lsm"], ["b", "a"])
    model = build_model(run("persistence"), dataset)
    x = torch.arange(5.0).reshape(1, 5, 1, 1).expand(1, 5, 8, 16)
    assert model(x)[0, :, 0, 0].tolist() == [3.0, 2.0]  # b and a at t, not at t-1


def test_residual_adds_the_network_to_persistence():
    dataset = FakeDataset(["a", "b"], ["b"])
    model = build_model(run("unet"), dataset)
    assert isinstance(model.persistence, Persistence)
    x = torch.randn(2, 2, 8, 16)
    assert torch.allclose(model(x), x[:, [1]] + model.net(x))
    assert isinstance(build_model(run("unet", residual=False), dataset), UNet)


def test_targets_missing_from_inputs_are_refused():
    dataset = FakeDataset(["a"], ["b"])
    with pytest.raises(ConfigError, match=r"\['b'\] are not"):
        build_model(run("persistence"), dataset)
    with pytest.raises(ConfigError, match="residual"):
        build_model(run("mlp"), dataset)
    assert isinstance(build_model(run("mlp", residual=False), dataset), MLP)


def test_unet_needs_a_grid():
    with pytest.raises(ConfigError, match="unet needs"):
        build_model(run("unet"), FakeDataset(["a"], ["a"], space=(50,)))


def test_climatology_recovers_seasonal_and_diurnal_cycles():
    times = pd.date_range("2000-01-01", "2002-12-31 18:00", freq="6h").to_numpy()
    basis = time_basis(times, annual=2, diurnal=1)
    assert basis.shape == (times.size, basis_size(2, 1))
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(basis.shape[1], 2, 3, 4))
    data = np.einsum("tk,kc...->tc...", basis, truth).astype(np.float32)
    data = np.concatenate([data, rng.normal(size=data.shape).astype(np.float32)], axis=1)  # channels 2, 3: noise
    model = Climatology(2, (3, 4), annual=2, diurnal=1)
    train = np.arange(2 * 1460)  # fitted on two years, read in blocks smaller than that
    model.fit(data, train, times, np.array([0, 1]), memory=2**14)  # many small reads
    assert np.allclose(model.coef.numpy(), truth, atol=1e-4)
    later = torch.from_numpy(basis[-5:])  # the third year is forecast exactly
    assert torch.allclose(model(torch.zeros(5, 1, 3, 4), later), torch.from_numpy(data[-5:, :2]), atol=1e-4)


def test_climatology_leaves_out_cycles_the_sampling_cannot_see():
    """12-hourly data cannot see a 24 h sine: lstsq sets it to 0 instead of failing on a singular system."""
    times = pd.date_range("2000-01-01", periods=800, freq="12h").to_numpy()
    basis = time_basis(times, 0, 1)
    assert np.allclose(basis[:, 2], 0)  # sin(2 pi h / 24) at 0 h and 12 h
    data = (1 + 2 * basis[:, 1])[:, None, None].astype(np.float32)
    model = Climatology(1, (1,), annual=0, diurnal=1)
    model.fit(data, np.arange(800), times, np.array([0]))
    assert np.allclose(model.coef.ravel().numpy(), [1, 2, 0], atol=1e-5)


def test_time_basis_uses_the_calendar_and_needs_dates():
    days = np.array([cftime.Datetime360Day(2001, 1, 1), cftime.Datetime360Day(2001, 7, 1)])
    year = time_basis(days, 1, 0)[:, 1]  # cos(2 pi * year fraction)
    assert np.allclose(year, [1.0, -1.0])  # day 181 of 360 is exactly half a 360-day year
    assert time_basis(np.arange(3), 0, 0).shape == (3, 1)  # the plain mean needs no dates
    with pytest.raises(ConfigError, match="no day of year"):
        time_basis(np.arange(3), 1, 0)


def test_climatology_is_fitted_on_observed_steps_only():
    """A point filled (stored as 0, the train mean) a third of the time must not be pulled towards 0."""
    times = pd.date_range("2000-01-01", "2001-12-31 18:00", freq="6h").to_numpy()
    basis = time_basis(times, annual=1, diurnal=1)
    truth = np.random.default_rng(1).normal(size=(basis.shape[1], 1, 2, 3)) + 3
    x = np.einsum("tk,kc...->tc...", basis, truth)
    observed = np.ones_like(x, dtype=bool)
    observed[::3, 0, 1, 2] = False  # one point filled every third step
    data = np.concatenate([np.where(observed, x, 0.0), observed * 4.0 - 2.0], axis=1).astype(np.float32)
    steps = np.arange(times.size)
    masked = Climatology(1, (2, 3), annual=1, diurnal=1)
    masked.fit(data, steps, times, np.array([0]), valid=[(1, 0.0)], memory=2**14)
    assert np.allclose(masked.coef.numpy(), truth, atol=1e-4)  # filled steps weigh nothing
    naive = Climatology(1, (2, 3), annual=1, diurnal=1)
    naive.fit(data, steps, times, np.array([0]))
    assert not np.allclose(naive.coef.numpy()[:, 0, 1, 2], truth[:, 0, 1, 2], atol=0.1)
    assert np.allclose(naive.coef.numpy()[:, 0, 0, 0], truth[:, 0, 0, 0], atol=1e-4)


class FakeEncodings:
    """Two channels that say which step they describe: its number, and the number squared."""

    def __len__(self):
        return 2

    def fields(self, steps, device="cpu"):
        steps = torch.as_tensor(np.asarray(steps), dtype=torch.float32, device=device).view(-1, 1, 1, 1)
        return torch.cat([steps, steps**2], dim=1).expand(-1, 2, 8, 16).contiguous()


def test_rollout_feeds_each_forecast_back_as_the_next_input():
    """history 1, static and encodings: step k's inputs are [a, b at t+k-1 (forecasts), a, b at t+k, lsm, enc(t+k)]."""
    torch.manual_seed(0)
    dataset = FakeDataset(["a@t-1", "b@t-1", "a", "b", "lsm", "e1", "e2"], ["b", "a"], leads=(2, 4, 6))
    dataset.store_channels, dataset.channels, dataset.history = ["a", "b"], np.array([0, 1]), 1
    dataset.encodings = FakeEncodings()
    model = build_model({**run("unet"), "rollout": 3}, dataset)
    assert isinstance(model, Rollout) and model.feed.tolist() == [1, 0] and model.stride == 2
    step, encode = model.net, dataset.encodings
    times = np.array([10, 50])
    x = torch.cat([torch.randn(2, 5, 8, 16), encode.fields(times)], dim=1)
    with pytest.raises(ValueError, match="steps="):
        model(x)
    out = model(x, steps=times)
    assert out.shape == (2, 6, 8, 16)
    inputs, expected = x, []
    for k in range(3):
        forecast = step(inputs)  # (b, a) at t + 2(k+1)
        expected.append(forecast)
        inputs = torch.cat(
            [inputs[:, 2:4], forecast[:, [1, 0]], inputs[:, 4:5], encode.fields(times + 2 * (k + 1))], dim=1
        )
    assert torch.allclose(out, torch.cat(expected, dim=1), atol=1e-6)


def test_rollout_backpropagates_through_every_step():
    """The last step sees the inputs' dynamic channels only through the earlier forecasts: a detached
    feed would give them no gradient."""
    dataset = FakeDataset(["a", "b", "lsm"], ["a", "b"], leads=(1, 2, 3))
    dataset.store_channels, dataset.channels, dataset.history, dataset.encodings = ["a", "b"], np.array([0, 1]), 0, None
    model = build_model({**run("mlp", residual=False), "rollout": 3}, dataset)
    x = torch.randn(2, 3, 8, 16, requires_grad=True)
    model(x)[:, 4:].sum().backward()
    assert x.grad[:, :2].abs().sum() > 0


def test_rollout_needs_every_input_among_the_targets():
    dataset = FakeDataset(["a", "a_valid"], ["a"], leads=(1, 2))
    dataset.store_channels, dataset.channels, dataset.history, dataset.encodings = (
        ["a", "a_valid"],
        np.array([0, 1]),
        0,
        None,
    )
    with pytest.raises(ConfigError, match=r"every input channel must be a target; \['a_valid'\] are not"):
        build_model({**run("unet"), "rollout": 2}, dataset)


def test_several_leads_at_once():
    dataset = FakeDataset(["a", "b"], ["b"], leads=(1, 2, 4))
    model = build_model(run("unet"), dataset)
    x = torch.randn(2, 2, 8, 16)
    assert model(x).shape == (2, 3, 8, 16)  # b at t+1, t+2, t+4
    assert torch.allclose(model(x), x[:, [1, 1, 1]] + model.net(x))  # each lead: persistence + the network
    assert build_model(run("persistence"), dataset)(x).tolist() == x[:, [1, 1, 1]].tolist()


def test_climatology_of_several_leads_stacks_each_valid_time():
    model = Climatology(2, (3,), annual=1, diurnal=0)
    model.coef.copy_(torch.randn(model.coef.shape))
    basis = torch.randn(4, 3, 3)  # (sample, lead, basis)
    x = torch.zeros(4, 1, 3)
    stacked = model(x, basis)
    assert stacked.shape == (4, 6, 3)
    for lead in range(3):
        assert torch.allclose(stacked[:, 2 * lead : 2 * lead + 2], model(x, basis[:, lead]))


def test_the_acc_reference_fits_only_the_harmonics_the_train_split_supports(short_hourly_store, tiny_store):
    store = open_store(short_hourly_store)  # 12 train days, hourly
    reference = reference_climatology(store, np.array([0]))
    assert (reference.annual, reference.diurnal) == (0, 2) and "annual harmonics 3 -> 0" in reference.notes[0]
    # on the test days it is the train mean and diurnal cycle: off by the noise alone (1 K of 2.3 K std)
    test = store.split_indices("test")
    with torch.inference_mode():
        clim = reference(torch.zeros(1), torch.from_numpy(time_basis(store.time[test], 0, 2))).numpy()
    rmse = np.sqrt(np.mean((clim - np.asarray(store.array[test])) ** 2)) * normalisation_scale(store.stats["std"])[0]
    assert 0.8 < rmse < 1.2  # K; fitted with annual harmonics it was tens of K
    three_years = reference_climatology(open_store(tiny_store), np.array([0]))  # 6-hourly, a whole train year
    assert (three_years.annual, three_years.diurnal, three_years.notes) == (3, 2, [])


def test_annual_harmonics_need_the_year_covered_and_diurnal_ones_the_day():
    year = pd.date_range("2001-01-01", "2001-12-31 18:00", freq="6h").to_numpy()
    assert supported_harmonics(year, 3, 2) == (3, 2, [])
    no_summer = year[(year < np.datetime64("2001-06-01")) | (year >= np.datetime64("2001-08-01"))]  # 61 days out
    assert supported_harmonics(no_summer, 3, 2)[:2] == (2, 2)  # harmonic 3 needs no gap of 1/6 year
    assert supported_harmonics(year[: 4 * 120], 3, 2)[:2] == (0, 2)  # 4 months of a year: no annual cycle
    assert supported_harmonics(year[:3], 0, 2) == (
        0,
        0,
        ["diurnal harmonics 2 -> 0: the train steps cover less than a day"],
    )  # 00, 06, 12 h: 18 h not seen
    daily = pd.date_range("2001-01-01", "2003-12-31", freq="D").to_numpy()
    assert supported_harmonics(daily, 3, 2) == (3, 2, [])  # every step at 00 h: the diurnal terms stay inert
    noleap = np.array([cftime.DatetimeNoLeap(2001, 1, 1) + k * pd.Timedelta("1D").to_pytimedelta() for k in range(365)])
    assert supported_harmonics(noleap, 3, 0)[:2] == (3, 0)  # a whole 365-day year of its calendar


def test_unet_on_a_regional_grid_takes_nothing_across_its_east_west_edges():
    """A regional grid (longitude_periodic false) is padded like the poles: every convolution sees its west edge
    column repeated to the west, never the east edge's (23 degrees away on NRCAN); a global grid wraps."""
    for periodic in (False, True):
        for grid in ((8, 96), (8, 90)):  # 90: padded up to a multiple of 4 too
            dataset = FakeDataset(["a", "b"], ["a"], grid, longitude_periodic=periodic)
            model = build_model(run("unet", residual=False), dataset).eval()
            seen = []
            for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)):
                conv.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(args[0]))
            with torch.no_grad():
                model(torch.randn(1, 2, *grid))
            assert len(seen) == 10  # 2 per block: 3 down, 2 up
            for padded in seen:  # (batch, channel, lat + 2, lon + 2)
                west_pad, west, east, east_pad = (padded[..., 1:-1, k] for k in (0, 1, -2, -1))
                assert torch.equal(west_pad, east if periodic else west)
                assert torch.equal(east_pad, west if periodic else east)
