"""NIR files in spyx, Rockpool and sinabs, run by their own importers in the environments `make interop` builds
(scripts/interop.sh). Marked ``interop`` and ``slow``: deselected by the fast suite; each test skips, saying
which environment is missing, where it has not been built."""

import warnings

import pytest
import torch
from torch import nn

import surroflos
from surroflos.export import ConsumerRefusal, to_nir, verify
from surroflos.export.verify import interop_python
from surroflos.snntorch import Leaky

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def need(name):
    if interop_python(name) is None:
        pytest.skip(f"{name} is not installed here and its environment (.interop/{name} or "
                    f"$SURROFLOS_INTEROP_DIR/{name}) has not been built: run `make interop`")


def quiet_verify(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return verify(*args, **kwargs)


@pytest.mark.parametrize("name", ["recurrent", "two-layer"])
def test_spyx_runs_its_form_exactly_one_step_late_per_layer(name):
    need("spyx")
    if name == "recurrent":
        model = surroflos.SpikingRNN(3, 16, 2, neuron="lif", reset="subtract", g=2.0, generator=gen(6))
        shift = {"lif": 1}
    else:
        model = nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8), nn.Linear(8, 6, bias=False), Leaky(beta=0.7),
                              nn.Linear(6, 2))
        shift = {"layer1": 1, "layer3": 2}
    x = torch.randn(60, 4, 3, generator=gen(9)) * 2
    rep = quiet_verify(model, 1e-3, x, simulators=("ours", "spyx"))
    r = rep["spyx"]
    assert r.form == "spyx" and r.shift == shift and r.version == "1.0.0", rep.table()
    assert r.spike_agreement == 1.0 and all(v == 1.0 for v in r.per_node.values()) and r.spikes > 20, rep.table()
    # Without the latency the same run disagrees: the shift is spyx's, not a tolerance.
    spec = quiet_verify(model, 1e-3, x, simulators=("ours", "spyx"), form="spec")
    assert spec["spyx"].shift == {} and spec["spyx"].spike_agreement < 1.0


def test_spyx_zero_reset_refused_and_the_spec_file_differs():
    need("spyx")
    model = surroflos.SpikingRNN(3, 16, 2, neuron="lif", reset="zero", g=2.0, generator=gen(6))
    with pytest.raises(ConsumerRefusal, match="zero reset"):
        to_nir(model, 1e-3, consumer="spyx")
    rep = quiet_verify(model, 1e-3, torch.randn(60, 4, 3, generator=gen(9)) * 2, simulators=("ours", "spyx"))
    assert rep["spyx"].refusal and rep["spyx"].form == "spec" and rep["spyx"].spike_agreement < 1.0


def test_rockpool_crashes_on_lif_and_runs_cubalif_with_its_own_reset():
    need("rockpool")
    x = torch.randn(40, 4, 3, generator=gen(9)) * 2
    lif = surroflos.SpikingRNN(3, 16, 2, neuron="lif", reset="zero", g=2.0, generator=gen(6))
    rep = quiet_verify(lif, 1e-3, x, simulators=("ours", "rockpool"))
    assert rep["rockpool"].refusal and "tau_mem" in rep["rockpool"].status, rep.table()
    cuba = surroflos.SpikingRNN(3, 16, 2, neuron="cuba", reset="zero", g=2.0, generator=gen(6))
    rep = quiet_verify(cuba, 1e-3, x, simulators=("ours", "rockpool"))
    assert rep["rockpool"].ok and rep["rockpool"].spike_agreement < 1.0 and rep["rockpool"].version == "3.1.0"


def test_sinabs_reads_only_after_dropping_v_reset_and_differs():
    need("sinabs")
    x = torch.randn(40, 4, 3, generator=gen(9)) * 2
    ff = nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8, reset_mechanism="zero"), nn.Linear(8, 2))
    rep = quiet_verify(ff, 1e-3, x, simulators=("ours", "sinabs"))
    r = rep["sinabs"]
    assert r.refusal and r.ok and r.version == "3.1.3" and "v_reset dropped" in r.note, rep.table()
    assert r.spike_agreement < 1.0  # its subtract reset and multi-spike output
