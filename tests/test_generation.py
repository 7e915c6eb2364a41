import pytest

from study.config import Decoding
from study.generation import Request, cut_reply, generate, sample_seed

pytestmark = pytest.mark.unit

SHORT = "\n\nHuman: tea?\n\nAssistant:"
LONG = "\n\nHuman: " + "Tell me about rain and music and books and cats. " * 3 + "\n\nAssistant:"
DEC = Decoding(max_new_tokens=12)


def _reqs(texts, samples=1):
    return [
        Request(f"p{i}", t, s, sample_seed(7, "arm", f"p{i}", s))
        for i, t in enumerate(texts)
        for s in range(samples)
    ]


def test_batched_greedy_equals_one_by_one(tiny_model, tiny_tok):
    reqs = _reqs([SHORT, LONG])
    together = generate(tiny_model, tiny_tok, reqs, DEC, greedy=True, batch_size=2)
    alone = [generate(tiny_model, tiny_tok, [r], DEC, greedy=True)[0] for r in reqs]
    assert together == alone


def test_min_equal_max_new_tokens_gives_exactly_n(tiny_model, tiny_tok):
    n = 9
    five = "\n\nHuman: hi"
    forty = "\n\nHuman: " + "cats and maps " * 12
    lengths = [len(tiny_tok(t)["input_ids"]) for t in (five, forty)]
    assert lengths[0] <= 8 and lengths[1] >= 40
    got = generate(
        tiny_model,
        tiny_tok,
        _reqs([five, forty]),
        Decoding(max_new_tokens=n),
        min_new_tokens=n,
        batch_size=2,
    )
    assert [g["n_tokens"] for g in got] == [n, n]


def test_sampled_replies_do_not_depend_on_batch_size_or_order(tiny_model, tiny_tok):
    reqs = _reqs([SHORT, LONG, SHORT + " ok", "\n\nHuman: maps\n\nAssistant:"], samples=3)
    one = generate(tiny_model, tiny_tok, reqs, DEC, batch_size=1)
    many = generate(tiny_model, tiny_tok, reqs, DEC, batch_size=5)
    reordered = generate(tiny_model, tiny_tok, reqs[::-1], DEC, batch_size=3)[::-1]
    assert one == many == reordered
    assert len({g["reply"] for g in one}) > 1  # samples differ from one another


def test_greedy_and_sampled_requests_share_a_batch_unchanged(tiny_model, tiny_tok):
    from dataclasses import replace

    sampled = _reqs([SHORT, LONG], samples=2)
    greedy = [replace(r, greedy=True) for r in _reqs([SHORT, LONG])]
    mixed = generate(tiny_model, tiny_tok, sampled + greedy, DEC, batch_size=6)
    assert mixed[:4] == generate(tiny_model, tiny_tok, sampled, DEC, batch_size=4)
    assert mixed[4:] == generate(tiny_model, tiny_tok, greedy, DEC, greedy=True, batch_size=2)


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(1, "a", "p", 0) == sample_seed(1, "a", "p", 0)
    assert len({sample_seed(1, "a", "p", s) for s in range(50)}) == 50


def test_reply_is_cut_at_a_new_human_turn():
    assert cut_reply(" Sure thing.\n\nHuman: and more?") == "Sure thing."


@pytest.mark.parametrize("greedy", [True, False])
def test_rows_leave_the_batch_at_their_eos_without_changing_the_others(
    tiny_model, tiny_tok, greedy
):
    import torch

    from study.generation import RowSampler, _decode

    texts = [SHORT, LONG, SHORT + " ok", "\n\nHuman: maps\n\nAssistant:", "\n\nHuman: hi"] * 4
    reqs = _reqs(texts)
    tiny_tok.padding_side = "left"
    enc = tiny_tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    n_pad = (enc["attention_mask"] == 0).sum(dim=1).tolist()

    def run(eos):
        gens = None if greedy else [torch.Generator().manual_seed(r.seed) for r in reqs]
        sampler = RowSampler(DEC, n_pad, gens, greedy)
        with torch.no_grad():
            return _decode(
                tiny_model,
                enc["input_ids"],
                enc["attention_mask"],
                None,
                sampler,
                max_new_tokens=16,
                min_new_tokens=0,
                eos=eos,
            )

    free = run(eos=-1)
    assert all(len(row) == 16 for row in free)
    # An end-of-sequence token that some rows draw early and others never draw.
    counts = {t: sum(t in row[:8] for row in free) for row in free for t in row}
    stop = max((t for t in counts if counts[t] < len(free)), key=lambda t: counts[t])
    cut = run(eos=stop)
    assert 0 < sum(stop in row for row in cut) < len(cut)
    for f, c in zip(free, cut):
        assert c == (f[: f.index(stop) + 1] if stop in f else f)
