"""Small shared contracts: fault specs, the approval broker, predictions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.approval_broker import ApprovalBroker
from agent.approval_request import DecisionRefused, HumanDecision, MoveRequest
from models.prediction import Prediction
from twins.faults import FaultSpec, FaultSpecError


def test_fault_spec_parses_every_kind():
    spec = FaultSpec.parse("nan@3, inf@4,shape@2,stuck,slow:0.05,stall@5:2.5,drop@8")
    assert spec.nan_at == {3} and spec.inf_at == {4} and spec.shape_at == {2}
    assert spec.stuck_stage and spec.slow_seconds == 0.05
    assert spec.stall_at == {5: 2.5} and spec.drop_at == {8}
    assert FaultSpec.parse(None) == FaultSpec()


@pytest.mark.parametrize("bad", ["melt@1", "nan", "nan@x", "slow:fast"])
def test_fault_spec_rejects_bad_items(bad):
    with pytest.raises(FaultSpecError):
        FaultSpec.parse(bad)


def test_broker_hands_a_decision_to_the_waiting_session():
    broker = ApprovalBroker()
    request_id = broker.submit(MoveRequest(target={"x": 1e-3, "y": 0.0}))
    assert broker.pending()[0].request_id == request_id
    answer = []
    waiter = threading.Thread(target=lambda: answer.append(broker.wait(request_id, 5)))
    waiter.start()
    with pytest.raises(DecisionRefused):          # a move offers approve and skip only
        broker.decide(request_id, {"decision": "relabel", "label": "Tips"})
    broker.decide(request_id, {"decision": "approve", "operator": "ana"})
    waiter.join(5)
    assert answer == [HumanDecision(decision="approve", operator="ana")]
    assert broker.pending() == []
    with pytest.raises(KeyError):
        broker.decide(request_id, {"decision": "skip"})
    assert broker.wait("999", timeout=0.01) is None


def test_prediction_derived_fields():
    p = Prediction(["a", "b", "c"], np.array([0.2, 0.7, 0.1]), ["b"], np.zeros(4))
    assert p.label == "b" and p.confidence == pytest.approx(0.7)
    assert p.top_k(2) == [("b", pytest.approx(0.7)), ("a", pytest.approx(0.2))]
    record = p.as_record()
    assert record["conformal_set"] == ["b"] and record["probabilities"]["c"] == pytest.approx(0.1)
    assert 0 < p.entropy < np.log(3)
