"""MAP-Elites over a ribs archive with the ES as emitter (map_elites.py): members fill the grid, the best per cell
is kept, the centre jumps to elites, and a search resumes exactly."""

import pytest
import torch
from torch import nn

from eggroll_llm.es import EggrollES
from eggroll_llm.map_elites import MapElites

archives = pytest.importorskip("ribs.archives")


class Point(nn.Module):
    def __init__(self):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2))


def search(restart=3):
    es = EggrollES(Point(), population_size=8, sigma=0.3, lr=0.1, strategy="openai_es", seed=1)
    archive = archives.GridArchive(solution_dim=2, dims=[8, 8], ranges=[(-2, 2), (-2, 2)])
    # behaviour: the point itself; reward: closeness to (1, 1)
    return MapElites(es, archive, lambda m: m.x.detach().clone(), lambda m: -float((m.x.detach() - 1).pow(2).sum()),
                     restart=restart)


def test_members_fill_the_grid_and_each_cell_keeps_its_best():
    s = search()
    for _ in range(6):
        metrics = s.step()
    data = s.archive.data()
    assert metrics["elites"] == len(data["objective"]) > 8           # more cells than one generation's members
    for x, objective, measures in zip(data["solution"], data["objective"], data["measures"]):
        assert abs(objective + ((x - 1) ** 2).sum()) < 1e-5 and (abs(x - measures) < 1e-6).all()
    assert metrics["best"] == pytest.approx(float(data["objective"].max()))


def test_a_map_elites_search_resumes_exactly():
    whole = search()
    for _ in range(6):
        whole.step()
    half = search()
    for _ in range(4):
        half.step()
    resumed = search()
    resumed.load_state_dict({k: v.clone() for k, v in half.state_dict().items()})
    for _ in range(2):
        resumed.step()
    assert torch.equal(whole.es.model.x, resumed.es.model.x)
    assert len(whole.archive) == len(resumed.archive)
