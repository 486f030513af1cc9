"""The permutation symmetry of a network's hidden units, read from its traced graph (torch.fx).

Reordering the output units of a layer, and the matching input units of every layer that reads them, leaves the
function unchanged. `permutation_spec(model, example)` traces the model once (with shapes) and finds every
*group*: a set of hidden-unit axes that must be permuted together. A Linear or convolution starts a new group
(its weight's axis 0 and bias); elementwise activations, dropout, pooling, BatchNorm and InstanceNorm (whose
weight, bias and running statistics follow) carry a group through; an addition (residual shortcut) joins the groups of its two
sides into one; a flatten carries a group into blocks of the spatial size (a Linear's input axis after a
convolution); a zero-padding of channels (He et al.'s option-A shortcut) makes a composite group, the padded
group between two new ones, so the sum's permutation is block-diagonal. Groups that reach the input or the output are fixed. Anything else that touches a hidden axis
(concatenation, multiplication of two activations, attention, a reshape other than flatten) is refused in one
line naming the node, as is a model torch.fx cannot trace.

A spec maps each parameter or buffer name to its permuted axes: (axis, group, block, offset): `group` reorders the
units [offset, offset + its size) along `axis`, each unit `block` consecutive entries (1, or H*W after a flatten). `apply_permutation` reorders a
state dict by a permutation per group.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from landscape.errors import UsageError

Params = dict[str, torch.Tensor]
CARRY_MODULES = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Dropout,
                 nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
CARRY_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.leaky_relu, torch.nn.functional.gelu,
                   torch.nn.functional.silu, torch.tanh, torch.sigmoid, torch.nn.functional.dropout,
                   torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                   torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.relu6}
CARRY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
ADDITIONS = {operator.add, operator.iadd, torch.add}
FLATTENS = {torch.flatten}


@dataclass
class PermutationSpec:
    """Groups of hidden units (their sizes) and, for each parameter or buffer, its permuted (axis, group, block)s."""

    sizes: list[int] = field(default_factory=list)
    axes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    def members(self, group: int) -> list[tuple[str, int, int, int]]:
        """(name, axis, block, offset) of every tensor one of whose axes `group` permutes."""
        return [(name, axis, block, offset) for name, entries in self.axes.items()
                for axis, g, block, offset in entries if g == group]


class Groups:
    """Union-find over group ids, remembering each root's size, whether it is fixed, and for a composite group the
    groups it is made of, in order."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.segments: list[list[int] | None] = []

    def new(self, size: int, fixed: bool = False, segments: list[int] | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(fixed)
        self.segments.append(segments)
        return len(self.parent) - 1

    def fix(self, group: int) -> None:
        root = self.root(group)
        self.fixed[root] = True
        for part in self.segments[root] or []:
            self.fix(part)

    def leaves(self, group: int, offset: int = 0) -> list[tuple[int, int]]:
        """(plain root, offset) of the groups a composite is made of, recursively; a plain group is its own."""
        root = self.root(group)
        if self.segments[root] is None:
            return [(root, offset)]
        out = []
        for part in self.segments[root]:
            out += self.leaves(part, offset)
            offset += self.size[self.root(part)]
        return out

    def root(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def join(self, a: int, b: int, where: str) -> int:
        a, b = self.root(a), self.root(b)
        if a == b:
            return a
        if self.size[a] != self.size[b]:
            raise UsageError(f"weight matching: {where} adds {self.size[a]} and {self.size[b]} units")
        if self.segments[a] is None:
            a, b = b, a  # a composite absorbs a plain group
        if self.segments[b] is not None:  # two composites: join them part by part
            parts_a, parts_b = self.segments[a], self.segments[b]
            if [self.size[self.root(p)] for p in parts_a] != [self.size[self.root(p)] for p in parts_b]:
                raise UsageError(f"weight matching cannot follow hidden units through {where} (two differently "
                                 f"padded shortcuts meet): use align='none'")
            for x, y in zip(parts_a, parts_b):
                self.join(x, y, where)
        self.parent[b] = a
        if self.fixed[b]:
            self.fix(a)
        return a


@dataclass
class Flow:
    """What a node's output carries: the group of its channel axis (None: no hidden axis) and its block."""

    group: int | None
    block: int = 1


def trace(model: nn.Module, example: torch.Tensor):
    """The model's fx graph with tensor shapes; one-line UsageError when it cannot be traced."""
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        graph = torch.fx.symbolic_trace(model)
        ShapeProp(graph).propagate(example)
    except Exception as exc:  # noqa: BLE001  (fx raises many kinds; the user needs one line)
        raise UsageError(f"weight matching cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]}): use align='none'") from None
    return graph


def permutation_spec(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    """The permutation groups of `model` (see the module docstring), traced on `example` inputs."""
    graph = trace(model, example)
    modules = dict(graph.named_modules())
    groups = Groups()
    flows: dict[str, Flow] = {}
    axes: dict[str, list[tuple[int, int, int]]] = {}

    def refuse(node, what: str):
        raise UsageError(f"weight matching cannot follow hidden units through {node.name} ({what}); it permutes "
                         f"through Linear, Conv, BatchNorm, activations, pooling, additions and flatten: use "
                         f"align='none'")

    def source(node) -> Flow:
        first = node.args[0] if node.args else None
        return flows.get(getattr(first, "name", None), Flow(None))

    for node in graph.graph.nodes:
        if node.op == "placeholder":
            shape = node.meta.get("tensor_meta").shape if node.meta.get("tensor_meta") is not None else None
            flows[node.name] = Flow(groups.new(shape[1] if shape is not None and len(shape) > 1 else 0, fixed=True))
        elif node.op == "call_function" and node.target is operator.getitem and keeps_channels(node.args[1]):
            flows[node.name] = source(node)
        elif node.op == "call_function" and node.target is torch.nn.functional.pad:
            flows[node.name] = padded(node, source(node), groups)
        elif node.op == "get_attr":
            flows[node.name] = Flow(None)
        elif node.op == "call_module":
            layer = modules[node.target]
            incoming = source(node)
            if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                    refuse(node, f"a grouped convolution, groups={layer.groups}")
                out = groups.new(layer.weight.shape[0])
                axes[f"{node.target}.weight"] = [(0, out, 1)] + ([(1, incoming.group, incoming.block)]
                                                                  if incoming.group is not None else [])
                if layer.bias is not None:
                    axes[f"{node.target}.bias"] = [(0, out, 1)]
                flows[node.name] = Flow(out)
            elif isinstance(layer, _NormBase):  # BatchNorm, InstanceNorm: per-channel, so they follow
                if incoming.group is None:
                    refuse(node, "a normalisation of no hidden axis")
                for name, _ in list(layer.named_parameters()) + list(layer.named_buffers()):
                    if name != "num_batches_tracked":
                        axes[f"{node.target}.{name}"] = [(0, incoming.group, 1)]
                flows[node.name] = incoming
            elif isinstance(layer, CARRY_MODULES):
                flows[node.name] = incoming
            elif isinstance(layer, nn.Flatten):
                flows[node.name] = flattened(node, incoming)
            else:
                refuse(node, type(layer).__name__)
        elif node.op == "call_function" and node.target in ADDITIONS:
            sides = [flows.get(getattr(a, "name", None), Flow(None)) for a in node.args[:2]]
            if any(s.group is None for s in sides) or sides[0].block != sides[1].block:
                refuse(node, "an addition of a hidden axis and something else")
            flows[node.name] = Flow(groups.join(sides[0].group, sides[1].group, node.name), sides[0].block)
        elif node.op == "call_function" and node.target in CARRY_FUNCTIONS or \
                node.op == "call_method" and node.target in CARRY_METHODS:
            flows[node.name] = source(node)
        elif node.op == "call_function" and node.target in FLATTENS or \
                node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
            flows[node.name] = flattened(node, source(node))
        elif node.op == "call_function" and node.target is getattr:
            flows[node.name] = Flow(None)  # x.shape and the like: no hidden axis
        elif node.op == "call_method" and node.target == "size":
            flows[node.name] = Flow(None)
        elif node.op == "output":
            out = flows.get(getattr(node.args[0], "name", None), Flow(None))
            if out.group is not None:
                groups.fix(out.group)
        else:
            touching = [flows.get(getattr(a, "name", None)) for a in node.args if hasattr(a, "name")]
            if any(f is not None and f.group is not None for f in touching):
                refuse(node, str(getattr(node.target, "__name__", node.target)))
            flows[node.name] = Flow(None)
    resolved = {name: [(axis, leaf, block, offset) for axis, g, block in entries
                       for leaf, offset in groups.leaves(g) if not groups.fixed[leaf] and groups.size[leaf]]
                for name, entries in axes.items()}
    roots = sorted({leaf for entries in resolved.values() for _, leaf, _, _ in entries})
    renumber = {root: i for i, root in enumerate(roots)}
    spec = PermutationSpec([groups.size[r] for r in roots])
    for name, entries in resolved.items():
        if entries:
            spec.axes[name] = [(axis, renumber[leaf], block, offset) for axis, leaf, block, offset in entries]
    return spec


def keeps_channels(index) -> bool:
    """Whether an indexing x[index] keeps axes 0 and 1 whole (a spatial subsampling such as x[:, :, ::2, ::2])."""
    whole = slice(None, None, None)
    return isinstance(index, tuple) and len(index) >= 2 and index[0] == whole and index[1] == whole


def padded(node, incoming: Flow, groups: Groups) -> Flow:
    """F.pad of [B, C, H, W] that adds zero channels only: the channel group between two new groups of the zeros."""
    pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    meta = node.args[0].meta.get("tensor_meta") if hasattr(node.args[0], "meta") else None
    if incoming.group is None:
        return incoming
    if meta is None or len(meta.shape) != 4 or not isinstance(pads, (tuple, list)) or len(pads) != 6 or \
            any(int(p) for p in pads[:4]) or incoming.block != 1:
        raise UsageError(f"weight matching cannot follow hidden units through {node.name} (a padding other than of "
                         f"channels alone): use align='none'")
    low, high = int(pads[4]), int(pads[5])
    parts = ([groups.new(low)] if low else []) + [incoming.group] + ([groups.new(high)] if high else [])
    return Flow(groups.new(groups.size[groups.root(incoming.group)] + low + high, segments=parts))


def flattened(node, incoming: Flow) -> Flow:
    """A flatten from axis 1 of [B, C, *spatial]: the channel group in blocks of the spatial size."""
    meta = node.args[0].meta.get("tensor_meta") if node.args and hasattr(node.args[0], "meta") else None
    out_meta = node.meta.get("tensor_meta")
    if incoming.group is None:
        return incoming
    if meta is None or out_meta is None or len(out_meta.shape) != 2 or out_meta.shape[0] != meta.shape[0]:
        raise UsageError(f"weight matching cannot follow hidden units through {node.name} (a reshape other than a "
                         f"flatten to [batch, features]): use align='none'")
    spatial = 1
    for size in meta.shape[2:]:
        spatial *= int(size)
    return Flow(incoming.group, incoming.block * spatial)


def permute_axis(tensor: torch.Tensor, axis: int, block: int, order: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """`tensor` with its units [offset, offset + len(order)) along `axis` (each `block` entries long) in the order
    `order`; the other units stay."""
    shape = tensor.shape
    units = shape[axis] // block
    index = torch.arange(units)
    index[offset:offset + len(order)] = offset + order
    viewed = tensor.reshape(*shape[:axis], units, block, *shape[axis + 1:])
    return viewed.index_select(axis, index.to(tensor.device)).reshape(shape)


def apply_permutation(spec: PermutationSpec, state: Params, orders: list[torch.Tensor]) -> Params:
    """A copy of `state` with every group's units reordered by `orders[group]` (new unit i = old unit order[i])."""
    out = dict(state)
    for name, entries in spec.axes.items():
        if name not in out:
            continue
        tensor = out[name]
        for axis, group, block, offset in entries:
            tensor = permute_axis(tensor, axis, block, orders[group], offset)
        out[name] = tensor
    return out


def random_orders(spec: PermutationSpec, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(size, generator=generator) for size in spec.sizes]
