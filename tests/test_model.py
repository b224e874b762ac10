"""The reference convnet: parameter count, shapes, probabilities, summary table."""

from __future__ import annotations

import pytest
import torch

from mnist_edge.train.model import (
    REFERENCE_PARAMETERS,
    ConvNet,
    ConvNetConfig,
    ProbabilityModel,
    count_parameters,
    summary,
)


def test_reference_parameter_count():
    assert count_parameters(ConvNet()) == REFERENCE_PARAMETERS == 34_826


def test_per_layer_parameters_match_keras():
    net = ConvNet()
    counts = {
        name: sum(p.numel() for p in layer.parameters()) for name, layer in net.named_children()
    }
    assert counts == {
        "conv1": 320,
        "pool1": 0,
        "conv2": 18_496,
        "pool2": 0,
        "flatten": 0,
        "dropout": 0,
        "dense": 16_010,
    }


@pytest.mark.parametrize("batch", [1, 7, 1000], ids=["b1", "b7", "b1000"])
def test_forward_shapes_and_probabilities(batch):
    net = ConvNet().eval()
    x = torch.rand(batch, 1, 28, 28)
    logits = net(x)
    assert logits.shape == (batch, 10)
    probs = ProbabilityModel(net)(x)
    assert probs.shape == (batch, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(batch), atol=1e-5, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(logits, 1))


def test_flat_features_and_config_round_trip():
    config = ConvNetConfig()
    assert config.flat_features == 1600
    assert ConvNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError):
        ConvNetConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_summary_lists_layers_shapes_and_total():
    net = ConvNet()
    net.train()
    text = summary(net)
    assert "Total params: 34,826" in text
    for row in ("(None, 32, 26, 26)", "(None, 64, 5, 5)", "(None, 1600)", "(None, 10)", "18,496"):
        assert row in text
    assert net.training, "summary must restore the training mode"


def test_dropout_only_in_training_mode():
    net = ConvNet()
    x = torch.rand(4, 1, 28, 28)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    assert not torch.equal(net(x), net(x))


def _reference_order(net: ConvNet, x: torch.Tensor) -> torch.Tensor:
    """The Keras layer order: relu inside each conv, then the pool."""
    x = net.pool1(torch.relu(net.conv1(x)))
    x = net.pool2(torch.relu(net.conv2(x)))
    return net.dense(net.dropout(net.flatten(x)))


def test_forward_and_gradients_match_the_reference_layer_order():
    """Whatever order forward uses internally (relu and max-pool commute), values and
    gradients are bit-identical to the reference's conv -> relu -> pool."""
    torch.manual_seed(0)
    net = ConvNet().train()
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    torch.manual_seed(1)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.manual_seed(1)
    torch.nn.functional.cross_entropy(_reference_order(net, x), y).backward()
    for got, want in zip(grads, (p.grad for p in net.parameters()), strict=True):
        assert torch.equal(got, want)
