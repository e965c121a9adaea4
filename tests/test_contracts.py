"""hatcli.contracts: what each kind of factory returns is a class with every member
written down, so the engine calls members instead of probing for them."""

from __future__ import annotations

import inspect

import pytest
from hat_trainers.calibrator import Calibrator
from hat_trainers.ddp import DistributedDataParallelTrainer
from torch import nn

from hatcli import contracts, hookspecs, plugins
from hatcli.engine.metric import MeanLoss, TopKAccuracy


def test_a_bare_callback_answers_every_member_with_a_no_op() -> None:
    callback = contracts.Callback()
    callback.check(None)  # type: ignore[arg-type]  # a no-op reads nothing
    assert callback.metric_names() == []
    assert callback.state_key == "Callback"
    assert callback.order == 5
    assert callback.state_dict() == {}


def test_a_bare_trainer_has_every_optional_member_with_its_default() -> None:
    trainer = contracts.Trainer()
    model = nn.Linear(2, 2)
    assert trainer.needs_optimizer is True
    assert trainer.supports_distributed is False
    assert trainer.prepare_model(model) is model


def test_the_built_in_trainers_state_what_they_need_and_support() -> None:
    assert (Calibrator.needs_optimizer, Calibrator.supports_distributed) == (False, True)
    ddp = DistributedDataParallelTrainer
    assert (ddp.needs_optimizer, ddp.supports_distributed) == (True, True)


def test_every_installed_trainer_metric_and_class_callback_is_of_its_contract() -> None:
    for kind, base in (
        ("trainers", contracts.Trainer),
        ("metrics", contracts.Metric),
        ("callbacks", contracts.Callback),
    ):
        for component in plugins.components(kind).values():
            factory = component.factory
            if inspect.isclass(factory):
                assert issubclass(factory, base), (kind, component.name)
            else:  # a function: what it is annotated to return
                returns = inspect.signature(factory, eval_str=True).return_annotation
                assert issubclass(returns, base), (kind, component.name)


def test_a_bare_metric_says_what_to_implement() -> None:
    metric = contracts.Metric()
    assert metric.names() == [] and metric.sums == ()
    with pytest.raises(NotImplementedError):
        metric.reset()
    for built_in in (TopKAccuracy(), MeanLoss()):
        assert set(built_in.names()) == set(built_in.compute())


def test_every_contract_member_has_a_docstring() -> None:
    for cls in (contracts.Callback, contracts.Trainer, contracts.Metric):
        for name, member in vars(cls).items():
            if callable(member) or isinstance(member, property | staticmethod):
                assert name.startswith("__") or inspect.getdoc(member), f"{cls.__name__}.{name}"
    for protocol in (contracts.Register, contracts.Converter, contracts.Quantizable):
        assert inspect.getdoc(protocol)
        for name in ("__call__", "fuse_model", "set_qconfig"):
            if name in vars(protocol):
                assert inspect.getdoc(vars(protocol)[name]), f"{protocol.__name__}.{name}"


def test_every_registration_hook_names_what_its_factory_returns() -> None:
    for name, hook in vars(hookspecs).items():
        if name.startswith("hat_register_") and name != "hat_register_commands":
            assert "factory(" in (hook.__doc__ or ""), name
            assert "register" in inspect.signature(hook).parameters


def test_a_zoo_model_is_quantizable_and_a_plain_module_is_not() -> None:
    model = plugins.components("models")["DigitsNet"].factory()
    assert isinstance(model, contracts.Quantizable)
    assert not isinstance(nn.Linear(2, 2), contracts.Quantizable)
