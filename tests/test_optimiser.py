"""The trainer's optimiser (train.trainer.adam): fused where torch supports it, the same update."""

import torch

from latticerec.train.trainer import adam


def test_fused_adam_takes_the_same_steps_as_the_per_parameter_loop():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(50, 8)), torch.nn.Parameter(torch.randn(8))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused, loop = adam(a, 1e-2), torch.optim.Adam(b, lr=1e-2)
    assert fused.defaults.get("fused") is True  # torch >= 2.4 on CPU
    for _ in range(50):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        loop.step()
    for p, q in zip(a, b, strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_a_parameter_without_gradient_is_not_stepped():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = adam([p, q], 0.1)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(q, torch.ones(3)) and not torch.equal(p, torch.ones(3))
