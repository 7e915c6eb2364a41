"""The study's claims: each passes only when the data support it (see study/claims.py)."""

import pytest

from study import claims

CASES = claims.cases()


@pytest.mark.study
@pytest.mark.parametrize("claim,protocol", CASES, ids=[claims.case_id(c, p) for c, p in CASES])
def test_claim(study_run, claim, protocol):
    _, outcomes = study_run
    outcome = outcomes[claims.case_id(claim, protocol)]
    assert outcome["verdict"] == "supported", claims.failure_message(outcome)
