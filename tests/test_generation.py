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


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(1, "a", "p", 0) == sample_seed(1, "a", "p", 0)
    assert len({sample_seed(1, "a", "p", s) for s in range(50)}) == 50


def test_reply_is_cut_at_a_new_human_turn():
    assert cut_reply(" Sure thing.\n\nHuman: and more?") == "Sure thing."
