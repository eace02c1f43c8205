"""EGG: integer kernels bit for bit against element-by-element references, the population forward against members
one by one, the integer update, resume, the toy outcome, the corpus and the CLI's errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eggroll_llm.cli import main
from eggroll_llm.egg import corpus, intops, qeggroll
from eggroll_llm.egg.model import EggConfig, EggConfigError, forward, init_params
from eggroll_llm.egg.sample import sample
from eggroll_llm.egg.train import EggTrainConfig, EggTrainError, train


def rand_int8(gen, *shape):
    return torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)


# ---- references: plain Python / numpy int64, one element or one member at a time ----

def ref_saturate(v):
    return np.clip(v, -127, 127)


def ref_norm(x):  # x: int64 [..., H]
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        mean_abs = max(int(np.abs(row).sum()) // len(row), 1)
        recip = (1 << 16) // mean_abs
        out[idx] = ref_saturate((row * recip) >> 12)
    return out


def ref_scan(gate, cand, reset):  # [T, H] int64 one member
    h = np.zeros(gate.shape[1], dtype=np.int64)
    out = np.empty_like(cand)
    for t in range(gate.shape[0]):
        if reset[t]:
            h[:] = 0
        for j in range(len(h)):
            h[j] = h[j] + (((int(gate[t, j]) + 127) * (int(cand[t, j]) - int(h[j]))) >> 8)
        out[t] = h
    return out


def ref_log2(s):
    e = int(s).bit_length() - 1
    mant = (int(s) >> (e - 8)) & 255 if e >= 8 else (int(s) << (8 - e)) & 255
    return 16 * e + round(16 * math.log2(1 + mant / 256))


def ref_target_log2_prob(logits, target):  # one position
    s = sum(round(2.0 ** ((int(v) + 127) / 16) * 16) for v in logits)
    return (int(logits[target]) + 127) - (ref_log2(s) - 64)


def ref_linear(x, w, a, b, sigma_shift):  # x [T, K]; a [m, r], b [n, r] of one member, or None
    acc = x @ w.T
    if a is not None:
        acc = acc + ((((x @ b) >> 4) @ a.T) >> sigma_shift)
    return acc


def ref_member_forward(params, config, tokens, noise, sigma_shift):
    """One member's logits with numpy int64 and the formulas of docs/egg.md written out."""
    P = {k: v.numpy().astype(np.int64) for k, v in params.items()}
    N = {k: (a.numpy().astype(np.int64), b.numpy().astype(np.int64)) for k, (a, b) in noise.items()} if noise else {}
    shift = lambda k, g=0: max(0, 4 + (k.bit_length() - 1) // 2 - g)  # noqa: E731
    h = config.hidden
    x = P["embed"][tokens]
    if noise:
        a, b = N["embed"]
        x = ref_saturate(x + ((a[tokens] @ b.T) >> (4 + sigma_shift)))
    reset = tokens == 0
    lin = lambda x, name: ref_linear(x, P[name], *(N[name] if noise else (None, None)), sigma_shift)  # noqa: E731
    for i in range(config.layers):
        acc = lin(ref_norm(x), f"layers.{i}.mix")
        gate, cand = ref_saturate(acc[:, :h] >> shift(h, 2)), ref_saturate(acc[:, h:] >> shift(h))
        x = ref_saturate(x + ref_scan(gate, cand, reset))
        u = ref_saturate(lin(ref_norm(x), f"layers.{i}.up") >> shift(h, 2))
        x = ref_saturate(x + (lin(u, f"layers.{i}.down") >> shift(u.shape[-1])))
    return ref_saturate(lin(ref_norm(x), "head") >> shift(h, 2))


# ---- kernels ----

def test_kernels_match_references_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    x, w = rand_int8(gen, 3, 5, 24), rand_int8(gen, 7, 24)
    assert torch.equal(intops.int_matmul(x, w), torch.from_numpy(x.numpy().astype(np.int64) @ w.numpy().T).int())
    assert torch.equal(intops.int_norm(x).long(), torch.from_numpy(ref_norm(x.numpy().astype(np.int64))))
    gate, cand = rand_int8(gen, 2, 9, 6), rand_int8(gen, 2, 9, 6)
    reset = torch.rand(2, 9, generator=gen) < 0.3
    got = intops.gated_scan(gate, cand, reset)
    for n in range(2):
        want = ref_scan(gate[n].numpy().astype(np.int64), cand[n].numpy().astype(np.int64), reset[n].numpy())
        assert np.array_equal(got[n].numpy(), want)
    s = torch.tensor([1, 2, 3, 255, 256, 257, 1000, 2**20 + 12345, 2**28 - 1], dtype=torch.int32)
    assert intops.int_log2(s).tolist() == [ref_log2(v) for v in s.tolist()]
    logits, targets = rand_int8(gen, 4, 256), torch.randint(0, 256, (4,), generator=gen)
    got = intops.target_log2_prob(logits, targets)
    assert got.tolist() == [ref_target_log2_prob(logits[i].tolist(), int(targets[i])) for i in range(4)]
    assert (got <= 1).all()  # a log-probability, up to table rounding


def test_lowrank_term_matches_per_member_reference():
    gen = torch.Generator().manual_seed(2)
    x, a, b = rand_int8(gen, 4, 3, 16), rand_int8(gen, 4, 10, 2), rand_int8(gen, 4, 16, 2)
    got = intops.lowrank_term(x.int(), a, b, 3)
    for n in range(4):
        xn, an, bn = (t[n].numpy().astype(np.int64) for t in (x, a, b))
        want = sum((((xn @ bn[:, j:j + 1]) >> 4) @ an[:, j:j + 1].T) for j in range(2)) >> 3
        assert np.array_equal(got[n].numpy(), want)


# ---- model ----

CFG = EggConfig(hidden=16, layers=2, mlp_mult=2)


def _population(n=4, seed=0, step=0):
    params = init_params(CFG, seed)
    params["head"] = rand_int8(torch.Generator().manual_seed(5), *params["head"].shape)  # non-trivial logits
    noise = qeggroll.pair_noise(CFG.shapes(), seed, step, n, 1, 1)
    tokens = torch.randint(0, 256, (n, 12), generator=torch.Generator().manual_seed(3))
    tokens[:, 5] = 0  # a document separator resets the state
    return params, noise, tokens


def test_forward_matches_reference_and_members_one_by_one():
    params, noise, tokens = _population()
    members = qeggroll.member_noise(noise, 4)
    batched = forward(params, CFG, tokens, members, sigma_shift=3)
    assert batched.dtype == torch.int8 and batched.shape == (4, 12, 256)
    for n in range(4):
        one = {k: (a[n:n + 1], b[n:n + 1]) for k, (a, b) in members.items()}
        assert torch.equal(forward(params, CFG, tokens[n:n + 1], one, sigma_shift=3)[0], batched[n])
        ref = ref_member_forward(params, CFG, tokens[n].numpy(), {k: (a[0], b[0]) for k, (a, b) in one.items()}, 3)
        assert np.array_equal(batched[n].numpy().astype(np.int64), ref)
    plain = forward(params, CFG, tokens)
    want = ref_member_forward(params, CFG, tokens[0].numpy(), None, 3)
    assert np.array_equal(plain[0].numpy().astype(np.int64), want)
    assert not torch.equal(plain, batched)  # the perturbations do change the logits


def test_antithetic_members_share_noise_with_opposite_signs():
    _, noise, _ = _population()
    members = qeggroll.member_noise(noise, 4)
    a, b = members["head"]
    assert torch.equal(a[0], -a[1]) and torch.equal(b[0], b[1]) and not torch.equal(a[0], a[2])


# ---- update ----

def test_update_is_deterministic_matches_reference_and_stays_int8():
    params, noise, tokens = _population(n=8, seed=4, step=7)
    params = {k: v.clone() for k, v in params.items()}
    params["head"][0, :8] = 127  # saturated weights must not wrap
    params["head"][1, :8] = -127
    votes = torch.tensor([1, -1, 1, 0], dtype=torch.int32)
    z = qeggroll.z_threshold(0.3)
    new, moved = qeggroll.update(params, noise, votes, z)
    again, moved_again = qeggroll.update(params, qeggroll.pair_noise(CFG.shapes(), 4, 7, 8, 1, 1), votes, z)
    assert moved == moved_again > 0 and all(torch.equal(new[k], again[k]) for k in new)
    other = qeggroll.pair_noise(CFG.shapes(), 5, 7, 8, 1, 1)  # another seed, other noise, another step
    assert not torch.equal(qeggroll.update(params, other, votes, z)[0]["head"], new["head"])
    for name, w in new.items():
        assert w.dtype == torch.int8 and int(w.abs().max()) <= 127
        a, b = (t.numpy().astype(np.int64) for t in noise[name])
        zsum = sum(int(votes[k]) * (a[k] @ b[k].T) for k in range(4))
        threshold = max((z * math.isqrt(3 * 1 * 256)) >> 4, 1)
        step = np.sign(zsum) * (np.abs(zsum) >= threshold)
        want = np.clip(params[name].numpy().astype(np.int64) + step, -127, 127)
        assert np.array_equal(w.numpy(), want)
        assert (np.abs(w.numpy().astype(int) - params[name].numpy().astype(int)) <= 1).all()


def test_pair_fitness_and_alpha_schedule():
    assert qeggroll.pair_fitness(torch.tensor([5, 3, -2, -2, 0, 9])).tolist() == [1, 0, -1]
    assert qeggroll.alpha_at(0, 0.5, 0.05, 100) == 0.5
    assert qeggroll.alpha_at(100, 0.5, 0.05, 100) == pytest.approx(0.05)
    assert qeggroll.alpha_at(500, 0.5, 0.05, 100) == pytest.approx(0.05)
    assert qeggroll.z_threshold(1.0) == 0 and qeggroll.z_threshold(0.05) == round(256 * 1.959964)


# ---- corpus ----

def test_corpus_split_is_by_file_and_fixed(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i}.txt").write_text(f"file {i} " * 20)
    one, two = corpus.load_corpus(tmp_path), corpus.load_corpus(tmp_path)
    assert np.array_equal(one.train, two.train) and np.array_equal(one.val, two.val)
    assert one.train_files + one.val_files == 60 and one.val_files >= 1
    val_docs = set(bytes(one.val).split(b"\x00")) - {b""}
    train_docs = set(bytes(one.train).split(b"\x00")) - {b""}
    assert val_docs and not val_docs & train_docs


def test_baselines_order_on_text():
    text = np.frombuffer(b"\x00" + b"abcabcabd " * 500, dtype=np.uint8)
    b = corpus.baselines(text, text[:101].reshape(1, -1))
    assert b["uniform_bits_per_byte"] == 8.0
    assert b["bigram_bits_per_byte"] < b["unigram_bits_per_byte"] < 8.0 and b["zlib_bits_per_byte"] > 0


# ---- training ----

def _toy(tmp_path):
    data = tmp_path / "toy.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return data


def _config(tmp_path, out, **kw):
    settings = dict(output_dir=str(tmp_path / out), data=str(_toy(tmp_path)), population_size=32, seq_len=32,
                    eval_every=50, val_windows=4, val_seq_len=64, checkpoint_every=3, no_progress=True,
                    alpha_decay_steps=200, model=EggConfig(hidden=32, layers=1, mlp_mult=2))
    settings.update(kw)
    return EggTrainConfig(**settings)


def _records(run_dir):
    timing = {"wall_s", "member_tokens_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(tmp_path):
    straight = train(_config(tmp_path, "a", max_steps=6))
    cut = train(_config(tmp_path, "b", max_steps=4))
    resumed = train(_config(tmp_path, "b", max_steps=6), resume=True)
    from eggroll_llm.egg.sample import load_run

    pa, pb = load_run(straight)[0], load_run(resumed)[0]
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) and pa[k].dtype == torch.int8 for k in pa)
    keys = ("step", "train_bits_per_byte", "weights_moved", "alpha", "member_tokens")
    steps = lambda run: [tuple(r.get(k) for k in keys) for r in _records(run)]  # noqa: E731
    assert steps(straight) == steps(cut) and len(steps(straight)) == 7
    assert _records(straight)[-1] == _records(cut)[-1]  # the final evaluation too
    early = train(_config(tmp_path, "c", max_steps=1, checkpoint_every=100))  # only step 0 and the end saved
    (early / "checkpoints" / "step-000001").rename(early / "checkpoints" / "step-killed")  # as if killed at step 1
    resumed_early = train(_config(tmp_path, "c", max_steps=6), resume=True)
    assert steps(resumed_early) == steps(straight)


def test_toy_text_drops_well_below_unigram(tmp_path):
    run_dir = train(_config(tmp_path, "toy", max_steps=200))
    last = _records(run_dir)[-1]
    assert last["step"] == 200
    assert last["val_bits_per_byte"] < last["unigram_bits_per_byte"] - 1.0, last
    params, model = __import__("eggroll_llm.egg.sample", fromlist=["load_run"]).load_run(run_dir)
    assert all(p.dtype == torch.int8 and int(p.abs().max()) <= 127 for p in params.values())
    assert sample(params, model, "the ", 20, seed=0).startswith("the ")


# ---- CLI errors ----

@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/text"], "does not exist"),
    (["--hidden", "4"], "--hidden must be"),
    (["--population_size", "3"], "--population_size must be even"),
    (["--group_size", "6"], "--group_size must be even and divide"),
    (["--alpha", "0"], "--alpha and --alpha_end"),
    (["--resume"], "no checkpoint"),
    (["--val_seq_len", "5000"], "smaller --val_seq_len"),
])
def test_cli_errors_exit_2(tmp_path, capsys, args, message):
    toy = ["--data", str(_toy(tmp_path))]  # a later --data in args wins
    code = main(["egg", "train", "--output_dir", str(tmp_path / "run"), "--no-progress", *toy, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_refuses_empty_corpus_and_a_used_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["egg", "train", "--output_dir", str(tmp_path / "r"), "--data", str(tmp_path / "empty")]) == 2
    assert "no readable text files" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    assert main(["egg", "train", "--output_dir", str(tmp_path / "used"), "--data", str(_toy(tmp_path))]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["egg", "sample", str(tmp_path / "used")]) == 2
    assert "no EGG checkpoint" in capsys.readouterr().err


def test_cli_train_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["egg", "train", "--output_dir", str(out), "--data", str(_toy(tmp_path)), "--max_steps", "2",
                 "--population_size", "8", "--seq_len", "16", "--hidden", "16", "--layers", "1", "--val_windows", "2",
                 "--val_seq_len", "32", "--no-progress"])
    assert code == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_bits_per_byte", "unigram_bits_per_byte", "bigram_bits_per_byte", "zlib_bits_per_byte",
            "uniform_bits_per_byte", "member_tokens_per_s"} <= record.keys()
    capsys.readouterr()
    assert main(["egg", "sample", str(out), "--prompt", "the", "--bytes", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_model_size_errors():
    with pytest.raises(EggConfigError):
        EggConfig(layers=0)
    with pytest.raises(EggTrainError):
        EggTrainConfig(output_dir="x", rank=5)
