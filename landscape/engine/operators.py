"""Curvature operators of a model's mean loss over fixed batches: v -> M v for three matrices M.

- `HessianOperator`: the Hessian, by double backward (each batch's first-order graph built once and reused
  while all of them fit in a quarter of the free memory) or forward-over-reverse (`torch.func.jvp` of
  `torch.func.grad`);
- `GaussNewtonOperator`: the generalized Gauss-Newton matrix J' H_out J (Schraudolph 2002), J the Jacobian of
  the outputs and H_out the Hessian of the loss in the outputs: a Jacobian-vector product (forward mode), the
  output Hessian's product (in closed form for cross-entropy), a vector-Jacobian product; positive semi-definite
  for a convex loss such as cross-entropy;
- `FisherOperator`: the empirical Fisher, the mean over samples of g_i g_i' (g_i the gradient of sample i's
  loss), from per-sample gradients (`torch.func.vmap` of `grad`, in chunks), held while they fit in a quarter
  of the free memory.
Each is the batch-size-weighted sum of its batches' matrices (the matrix of the whole set's mean loss), with
respect to all parameters or the block in `wrt` (the others held fixed), takes and returns flat float64
vectors, and counts its products. The Gauss-Newton matrix and the Fisher need a loss of outputs and targets
(not a closure); the Fisher a loss that is the mean of per-sample losses and no BatchNorm on batch statistics
(which couples the samples). For a linear model under squared error the three are equal.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.engine.batches import BatchSet, Objective, as_float, cross_entropy
from landscape.engine.functional import FunctionalModel, Params, flatten, unflatten
from landscape.engine.memory import available_bytes
from landscape.errors import UsageError
from landscape.options import choose

OPERATORS = ("hessian", "ggn", "fisher")
OPERATOR_NAMES = {"hessian": "Hessian", "ggn": "Gauss-Newton matrix", "fisher": "empirical Fisher"}
HVP_METHODS = ("double-backward", "forward-over-reverse")
# `auto` is double backward: 1.25-1.4x faster than forward-over-reverse on CPU for VGG-A with BatchNorm
# (width 1/16 and 1/4, batch 64; benchmarks/bench_hessian.py prints both on the device at hand).
DEFAULT_HVP = "double-backward"
CACHE_SHARE = 0.25  # graphs or per-sample gradients are kept while they take at most this share of free memory
FISHER_CHUNK = 32  # samples whose gradients are computed in one vmap


def saved_bytes(build: Callable[[], object]) -> tuple[object, int]:
    """`build()` and the bytes autograd saved for its backward (what keeping its graph costs)."""
    saved = [0]

    def count(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        built = build()
    return built, saved[0]


class CurvatureOperator:
    """M v of the mean loss of `module` at `params` over `batches`, with respect to the parameters in `wrt`.

    A subclass gives `prepare(batch)` (what one batch's products reuse: built once per batch and kept while every
    batch's fits in CACHE_SHARE of free memory, else rebuilt per product) and `batch_product(state, batch, v)`."""

    name = "hessian"

    def __init__(self, module: nn.Module, params: Params, buffers: Params, batches: BatchSet | list,
                 objective: Objective | None = None, wrt: list[str] | None = None,
                 on_product: Callable[[], None] | None = None, reuse: bool | None = None):
        if not isinstance(batches, BatchSet):
            batches = BatchSet(list(batches))
        self.module, self.buffers = module, buffers
        self.objective = objective or Objective()
        self.batches = batches.fixed()
        self.shares = batches.shares
        names = wrt or list(params)
        self.params = {n: params[n].detach() for n in names}
        self.frozen = {n: p.detach() for n, p in params.items() if n not in self.params}
        self.size = sum(p.numel() for p in self.params.values())
        self.device = next(iter(self.params.values())).device
        self.products = 0  # operator-vector products computed so far
        self.on_product = on_product
        self.reuse = reuse
        self.states: list | None = None

    def forward(self, params: Params) -> FunctionalModel:
        return FunctionalModel(self.module, {**self.frozen, **params}, self.buffers)

    def loss(self, params: Params, batch) -> torch.Tensor:
        return self.objective.loss_only(self.forward(params), batch)

    def prepare(self, batch):
        return None

    def batch_product(self, state, batch, vector: Params) -> Params:
        raise NotImplementedError

    def prepared_with_size(self, batch) -> tuple[object, int]:
        """One batch's prepared state and the bytes keeping it costs (by default, what autograd saved)."""
        return saved_bytes(lambda: self.prepare(batch))

    def batch_states(self) -> list | None:
        """Every batch's prepared state if they fit (decided on the first), else None (prepare per product)."""
        if self.reuse is None:
            first, size = self.prepared_with_size(self.batches[0])
            self.reuse = size * len(self.batches) < CACHE_SHARE * available_bytes(self.device)
            self.states = [first] if self.reuse else None
        if self.reuse and (self.states is None or len(self.states) < len(self.batches)):
            self.states = (self.states or [])[:1] + [self.prepare(batch) for batch in self.batches[1:]]
        return self.states if self.reuse else None

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """M v for a flat float64 vector v [P]; returns float64 [P]."""
        states = self.batch_states()
        as_params = unflatten(vector, self.params)
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for index, (share, batch) in enumerate(zip(self.shares, self.batches)):
            try:
                state = states[index] if states is not None else self.prepare(batch)
                product = self.batch_product(state, batch, as_params)
            except (RuntimeError, NotImplementedError) as exc:
                if "derivative for" not in str(exc) and "not implemented" not in str(exc):
                    raise
                raise UsageError(f"the model uses an operation without a second derivative in torch "
                                 f"({' '.join(str(exc).split())[:120]}): use a plain implementation of it (for "
                                 f"HuggingFace models, attn_implementation='eager')") from None
            total += share * flatten({n: product[n] if product[n] is not None else torch.zeros_like(v)
                                      for n, v in as_params.items()}, list(self.params))
        self.products += 1
        if self.on_product is not None:
            self.on_product()
        return total


class HessianOperator(CurvatureOperator):
    """H v by double backward through each batch's gradient graph, or by forward-over-reverse."""

    name = "hessian"

    def __init__(self, module: nn.Module, params: Params, buffers: Params, batches: BatchSet | list,
                 objective: Objective | None = None, method: str = "auto", reuse_graph: bool | None = None,
                 wrt: list[str] | None = None, on_product: Callable[[], None] | None = None):
        method = DEFAULT_HVP if method == "auto" else method
        choose("hvp", method, HVP_METHODS)
        super().__init__(module, params, buffers, batches, objective, wrt, on_product,
                         reuse=reuse_graph if method == "double-backward" else False)
        self.method = method

    def prepare(self, batch) -> tuple[list[torch.Tensor], tuple]:
        """Leaf copies of the parameters and the batch's gradient with its graph (for a second backward)."""
        if self.method == "forward-over-reverse":
            return None
        leaves = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
        grads = torch.autograd.grad(self.loss(leaves, batch), list(leaves.values()), create_graph=True,
                                    allow_unused=True)
        grads = tuple(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, leaves.values()))
        return list(leaves.values()), grads

    def batch_product(self, state, batch, vector: Params) -> Params:
        if self.method == "forward-over-reverse":
            _, product = jvp(lambda p: grad(self.loss)(p, batch), (self.params,), (vector,))
            return product
        leaves, grads = state
        products = torch.autograd.grad(grads, leaves, grad_outputs=list(vector.values()),
                                       retain_graph=self.reuse is True, allow_unused=True)
        return dict(zip(vector, products))


def loss_of_outputs(objective: Objective, operator: str) -> Callable:
    """The objective's loss(outputs, targets); refused for a closure, which hides the outputs."""
    if objective.closure is not None:
        raise UsageError(f"the {OPERATOR_NAMES[operator]} needs the model's outputs and a loss(outputs, targets); a "
                         f"closure hides them: pass loss= instead, or use operator='hessian'")
    return objective.loss or cross_entropy


GGN_METHODS = ("auto", "closed-form", "autograd")


def softmax_hessian_product(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The Hessian of mean cross-entropy in the logits [B, K] times u [B, K]: (p * u - p (p . u)) / B per sample,
    the closed form of softmax's (diag(p) - p p') / B, no second backward."""
    pu = probs * u
    return (pu - probs * pu.sum(dim=1, keepdim=True)) / probs.shape[0]


class GaussNewtonOperator(CurvatureOperator):
    """J' H_out J v. For the default loss (plain mean cross-entropy) `method` auto is closed-form: J v by forward
    mode (`torch.func.jvp`), H_out in closed form (`softmax_hessian_product`), J' (.) by one backward through the
    batch's kept output graph. For any other loss (autograd): J v by the double-vector-Jacobian trick on that graph,
    the output Hessian's product by double backward of the loss in the outputs, then J' (.)."""

    name = "ggn"

    def __init__(self, *args, method: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_of_outputs(self.objective, "ggn")
        choose("ggn_method", method, GGN_METHODS)
        closed = self.loss_fn is cross_entropy or self.loss_fn is torch.nn.functional.cross_entropy
        if method == "closed-form" and not closed:
            raise UsageError("ggn_method closed-form is for the default loss (mean cross-entropy): give "
                             "ggn_method='autograd' for another loss")
        self.closed_form = closed if method == "auto" else method == "closed-form"

    def outputs(self, params: Params, inputs) -> torch.Tensor:
        outputs = as_float(self.forward(params)(inputs))
        if not isinstance(outputs, torch.Tensor):
            raise UsageError(f"the Gauss-Newton matrix needs a model that returns a tensor, got "
                             f"{type(outputs).__name__}: use operator='hessian'")
        return outputs

    def prepare(self, batch):
        inputs, targets = batch
        leaves = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
        outputs = self.outputs(leaves, inputs)
        if self.closed_form:
            return list(leaves.values()), outputs, torch.softmax(outputs.detach().double(), dim=1)
        dummy = torch.zeros_like(outputs, requires_grad=True)
        pulled = torch.autograd.grad(outputs, list(leaves.values()), dummy, create_graph=True, allow_unused=True)
        free = outputs.detach().requires_grad_(True)
        loss_grad = torch.autograd.grad(self.loss_fn(free, targets), free, create_graph=True)[0]
        return list(leaves.values()), outputs, dummy, pulled, free, loss_grad

    def batch_product(self, state, batch, vector: Params) -> Params:
        if self.closed_form:
            leaves, outputs, probs = state
            _, jv = jvp(lambda p: self.outputs(p, batch[0]), (self.params,), (vector,))
            hjv = softmax_hessian_product(probs, jv.double()).to(outputs.dtype)
        else:
            leaves, outputs, dummy, pulled, free, loss_grad = state
            used = [(p, v) for p, v in zip(pulled, vector.values()) if p is not None]
            jv = torch.autograd.grad([p for p, _ in used], dummy, [v for _, v in used], retain_graph=True)[0]
            hjv = torch.autograd.grad(loss_grad, free, jv, retain_graph=True)[0]
        products = torch.autograd.grad(outputs, leaves, hjv, retain_graph=True, allow_unused=True)
        return dict(zip(vector, products))


def couples_samples(module: nn.Module) -> bool:
    """Whether a BatchNorm of `module` normalises with its batch's statistics (so one sample's output depends on the
    others, and per-sample gradients are not the model's)."""
    return any(isinstance(m, _BatchNorm) and (m.training or m.running_mean is None) for m in module.modules())


class FisherOperator(CurvatureOperator):
    """mean_i g_i (g_i . v) from per-sample gradients g_i [B, P] (kept per batch while they fit)."""

    name = "fisher"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_of_outputs(self.objective, "fisher")
        if couples_samples(self.module):
            raise UsageError("the empirical Fisher needs per-sample gradients, and BatchNorm on batch statistics "
                             "couples the samples: use bn='eval' (the running statistics)")
        self.check_mean_of_samples()

    def check_mean_of_samples(self) -> None:
        """Refuse a loss that is not the mean of its per-sample losses (a sum, or a batch-level term)."""
        inputs, targets = self.batches[0]
        with torch.no_grad():
            outputs = as_float(self.forward(self.params)(inputs))
            whole = float(self.loss_fn(outputs, targets))
            parts = [float(self.loss_fn(outputs[i:i + 1], targets[i:i + 1])) for i in range(min(len(targets), 8))]
            count = len(parts)
            head = float(self.loss_fn(outputs[:count], targets[:count]))
        mean = sum(parts) / count
        if abs(head - mean) > 1e-4 * max(abs(mean), 1e-6) or not torch.isfinite(torch.tensor(whole)):
            raise UsageError(f"the empirical Fisher needs a loss that is the mean of per-sample losses; on the first "
                             f"{count} samples this one gives {head:.6g}, their per-sample mean {mean:.6g}: use a "
                             f"mean-reduced loss, or operator='hessian'")

    def per_sample_grads(self, batch) -> torch.Tensor:
        """g_i for every sample of the batch, flat [B, P] in the parameters' dtype."""
        inputs, targets = batch
        weights = {**self.frozen}
        buffers = self.buffers

        def sample_loss(params, x, y):
            outputs = functional_call(self.module, ({**weights, **params}, buffers), (x.unsqueeze(0),))
            return self.loss_fn(as_float(outputs), y.unsqueeze(0))

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        rows = []
        for start in range(0, len(targets), FISHER_CHUNK):
            grads = per_sample(self.params, inputs[start:start + FISHER_CHUNK], targets[start:start + FISHER_CHUNK])
            rows.append(torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in self.params], dim=1))
        return torch.cat(rows)

    def prepare(self, batch) -> torch.Tensor:
        return self.per_sample_grads(batch)

    def prepared_with_size(self, batch) -> tuple[torch.Tensor, int]:
        grads = self.prepare(batch)
        return grads, grads.numel() * grads.element_size()

    def batch_product(self, state, batch, vector: Params) -> Params:
        flat = flatten(vector, list(vector)).to(state.dtype)
        product = state.T @ (state @ flat) / state.shape[0]
        return unflatten(product, vector)


OPERATOR_CLASSES = {"hessian": HessianOperator, "ggn": GaussNewtonOperator, "fisher": FisherOperator}


def curvature_operator(name: str, module: nn.Module, params: Params, buffers: Params, batches, objective=None, *,
                       hvp: str = "auto", wrt: list[str] | None = None, on_product: Callable[[], None] | None = None,
                       ggn_method: str = "auto") -> CurvatureOperator:
    """The operator called `name` (hessian, ggn or fisher); `hvp` chooses the Hessian's product method,
    `ggn_method` the Gauss-Newton matrix's."""
    choose("operator", name, OPERATORS)
    if name == "hessian":
        return HessianOperator(module, params, buffers, batches, objective, hvp, wrt=wrt, on_product=on_product)
    if name == "ggn":
        return GaussNewtonOperator(module, params, buffers, batches, objective, wrt, on_product, method=ggn_method)
    return OPERATOR_CLASSES[name](module, params, buffers, batches, objective, wrt, on_product)
