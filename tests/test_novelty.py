"""Novelty search (novelty.py): the k-nearest-neighbour novelty of hand-made behaviours, the NS / NSR / NSRA fitness
transforms, NSRA's weight schedule, an exact resume of a search, and agents sharing one archive."""

import pytest
import torch
from torch import nn

from eggroll_llm.es import EggrollES
from eggroll_llm.novelty import NoveltyArchive, NoveltySearch


def test_novelty_is_the_mean_distance_to_the_k_nearest_archived_behaviours():
    archive = NoveltyArchive(k=2)
    archive.add(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]))
    archive.add(torch.tensor([10.0, 10.0]))
    assert len(archive) == 4
    novelty = archive.novelty(torch.tensor([[0.0, 0.0], [0.5, 0.0], [10.0, 13.0]]))
    # (0, 0): neighbours at 0 and 1; (0.5, 0): 0.5 and 0.5; (10, 13): 3 and √(100 + 100)
    torch.testing.assert_close(novelty, torch.tensor([0.5, 0.5, (3 + 200 ** 0.5) / 2]))
    small = NoveltyArchive(k=10)                     # fewer archived than k: all of them
    small.add(torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(small.novelty(torch.tensor([[4.0, 5.0]])), torch.tensor([5.0]))
    with pytest.raises(ValueError, match="same shape"):
        small.add(torch.tensor([1.0, 2.0, 3.0]))


class Point(nn.Module):
    def __init__(self):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2))


def search(method, **kw):
    model = Point()
    es = EggrollES(model, population_size=8, sigma=0.1, lr=0.05, strategy="openai_es", fitness="none")
    return NoveltySearch(es, lambda m: m.x.detach().clone(), lambda m: -float(m.x.detach().pow(2).sum()),
                         method=method, k=3, **kw)


def test_the_transforms_weigh_reward_and_novelty_as_each_method_says():
    rewards, novelty = torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    ns, nsr, nsra = (search(m).fitness(rewards, novelty) for m in ("ns", "nsr", "nsra"))
    assert ns.argmax() == 3 and nsra.argmax() == 0                  # novelty alone / reward at NSRA's start w = 1
    torch.testing.assert_close(nsr, torch.zeros(4))                  # opposite ranks cancel at w = 1/2


def test_nsra_turns_to_novelty_after_patience_steps_without_a_better_centre():
    s = search("nsra", patience=2, weight_step=0.25)
    s.reward_fn = lambda m: -1.0                                     # the centre's reward never improves
    rewards, behaviours = torch.zeros(8), torch.randn(8, 2)
    weights = [s.tell(rewards + torch.arange(8.0), behaviours)["weight"] for _ in range(4)]
    assert weights == [1.0, 0.75, 0.75, 0.5] and len(s.archive) == 5  # the start's behaviour + one per step


def test_a_novelty_search_resumes_exactly():
    whole = search("nsra")
    for _ in range(4):
        whole.step()
    half = search("nsra")
    for _ in range(2):
        half.step()
    resumed = search("nsra")
    resumed.load_state_dict({k: v.clone() for k, v in half.state_dict().items()})
    for _ in range(2):
        resumed.step()
    assert torch.equal(whole.es.model.x, resumed.es.model.x)
    assert torch.equal(whole.archive.behaviours, resumed.archive.behaviours) and whole.weight == resumed.weight


def test_a_meta_population_shares_one_archive():
    shared = NoveltyArchive(k=3)
    agents = [search("nsra", archive=shared) for _ in range(3)]
    assert all(a.archive is shared for a in agents) and len(shared) == 3      # every agent's start
    agents[1].step()
    assert len(shared) == 4                                                  # the stepped agent's new centre
    torch.testing.assert_close(shared.behaviours[-1], agents[1].es.model.x.detach())
