"""Weights that train.py (a classifier, read back into a WasteNet) or train_detector.py (its convolutions) exported, read back from the ONNX file.

The export folds every batch norm into the convolution before it (eval mode, constant folding), so the
file holds one weight and one bias per convolution. For inference (a distillation teacher) each batch
norm becomes the identity plus that bias. To train on (fine-tuning), `unfold_batch_norms` gives each
batch norm the statistics of its convolution's output on training batches and the scale and shift
that undo them: the network computes exactly the same in eval mode, and in train mode a batch's own
statistics are close to those, so training starts from the exported model rather than from a network
whose batch norms suddenly normalise unscaled outputs.
"""
import json

import numpy as np
import torch
import torch.nn as nn

from export import run_metrics
from net import WasteNet


def split_member(path):
    """'FILE#N' names member N (from 1, as the card counts) of an ensemble.py file: (FILE, N or None)."""
    file, sep, member = path.rpartition("#")
    if sep and member.isdigit() and int(member) >= 1:
        return file, int(member)
    return path, None


def ensemble_member(file, meta, member):
    """What an ensemble.py file's `training` metadata records of member N (from 1), or None for a file
    of one network; refuses an ensemble without a valid member, and a member of one network."""
    members = json.loads(meta.get("training", "{}") or "{}").get("members")
    if members:
        if member is None or member > len(members):
            raise SystemExit(f"{file}: an ensemble of {len(members)} networks (ensemble.py); name one as "
                             f"{file}#N, N from 1 to {len(members)} ({', '.join(m.get('file', '?') for m in members)}), "
                             f"got {'no member' if member is None else f'member {member}'}")
        return members[member - 1]
    if member is not None:
        raise SystemExit(f"{file}: one network, not an ensemble; '#{member}' names a member of an ensemble")
    return None


def read_model(path):
    """(metadata, [(conv weight, conv bias) in graph order], (head weight, head bias)) of one network in
    the file: a flip-averaged export runs the same weights twice, so each weight counts once.
    For an ensemble (ensemble.py) the path must name a member: 'FILE#N'."""
    meta, convs, nodes, resolve = read_convs(path)
    head = None
    for node in nodes:
        if node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute}
            weight = resolve(node.input[1])
            head = (weight if attrs.get("transB", 0) else weight.T, resolve(node.input[2]))
            break
    if head is None:
        raise SystemExit(f"{path}: no fully connected head; not an export of train.py")
    return meta, convs, head


def read_convs(path):
    """(metadata, [(conv weight, conv bias) in graph order, each weight once], the graph's nodes, a
    reader of a weight by name) of one network in an ONNX file this project exported."""
    import onnx
    from onnx import numpy_helper

    file, member = split_member(path)
    model = onnx.load(file)
    meta = {p.key: p.value for p in model.metadata_props}
    nodes = list(model.graph.node)
    if ensemble_member(file, meta, member) is not None:
        # ensemble.py copies member k's nodes and weights under the prefix m{k-1}/.
        prefix = f"m{member - 1}/"
        nodes = [n for n in nodes if n.output[0].startswith(prefix)]
    init = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    # Identity (flip-averaged exports) and Cast (ensemble.py's float16 storage) only rename a weight.
    alias = {n.output[0]: n.input[0] for n in nodes if n.op_type in ("Identity", "Cast")}
    resolve = lambda name: init[alias.get(name, name)]
    convs, seen = [], set()
    for node in nodes:
        if node.op_type == "Conv":
            weight_name = alias.get(node.input[1], node.input[1])
            if weight_name in seen:
                continue
            seen.add(weight_name)
            if len(node.input) < 3:
                raise SystemExit(f"{path}: convolution {node.name} has no bias; not an export of this project's training")
            convs.append((resolve(node.input[1]), resolve(node.input[2])))
    return meta, convs, nodes, resolve


@torch.no_grad()
def load_convolutions(net, path):
    """Copies the convolutions of an exported file into `net` (any network of conv_bn blocks and plain
    convolutions, as train_detector.py's): each convolution of the net, in module order, takes the
    first unused one of its shape in the file (graph order can differ from module order where a
    forward pass runs a later module first). A convolution followed by a batch norm gets the folded
    weight and its batch norm the identity plus the folded bias, as `load` does; unfold_batch_norms
    then makes it trainable. Returns the file's metadata."""
    meta, convs, _, _ = read_convs(path)
    modules = list(net.modules())
    used = [False] * len(convs)
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Conv2d):
            continue
        k = next((j for j, (w, _) in enumerate(convs) if not used[j] and w.shape == tuple(m.weight.shape)), None)
        if k is None:
            raise SystemExit(f"{path}: no convolution of shape {tuple(m.weight.shape)} left for the network's")
        used[k] = True
        weight, bias = convs[k]
        if m.bias is not None:
            m.weight.copy_(torch.from_numpy(np.array(weight)))
            m.bias.copy_(torch.from_numpy(np.array(bias)))
        else:
            set_folded(m, next(x for x in modules[i + 1:] if isinstance(x, nn.BatchNorm2d)), weight, bias)
    if not all(used):
        raise SystemExit(f"{path}: {used.count(False)} convolutions more than the network has")
    return meta


def widths_of(convs):
    """The four stage widths of net.py's WasteNet from its convolutions' output channels."""
    out = [w.shape[0] for w in convs]
    stages = []
    for c in out[1:]:
        if not stages or stages[-1] != c:
            stages.append(c)
    return tuple(stages)


def require_widths(net, path, widths):
    """Stops unless the stage widths of a net read from `path` are `widths` ("32,64,128,256", as --widths)."""
    found = ",".join(str(w) for w in widths_of([conv.weight for conv, _ in conv_bn_pairs(net)]))
    if found != widths:
        raise SystemExit(f"{path} has stage widths {found}: pass --widths {found}")


def conv_bn_pairs(net):
    """(conv, batch norm) of every convolution followed by a batch norm (conv_bn: no bias of its own),
    in module order; for a WasteNet that is the order its forward pass runs them and an export lists them."""
    modules = list(net.modules())
    pairs = []
    for i, m in enumerate(modules):
        if isinstance(m, nn.Conv2d) and m.bias is None:
            bn = next(x for x in modules[i + 1:] if isinstance(x, nn.BatchNorm2d))
            pairs.append((m, bn))
    return pairs


def set_folded(conv, bn, weight, bias):
    """An exported convolution with its batch norm folded in: the weight to the convolution, the batch
    norm the identity plus the folded bias."""
    conv.weight.copy_(torch.from_numpy(np.array(weight)))
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)  # so that sqrt(var + eps) is exactly 1
    bn.weight.fill_(1)
    bn.bias.copy_(torch.from_numpy(np.array(bias)))


@torch.no_grad()
def load(path, classes):
    """A WasteNet (eval mode) that computes what the exported file computes without its flip average.
    Returns (net, input size (width, height) from the metadata)."""
    meta, convs, (head_w, head_b) = read_model(path)
    labels = json.loads(meta.get("labels", "[]"))
    if labels != classes:
        raise SystemExit(f"{path} labels {labels}, these photos' classes are {classes}")
    net = WasteNet(len(classes), widths=widths_of([w for w, _ in convs]))
    pairs = conv_bn_pairs(net)
    if len(pairs) != len(convs):
        raise SystemExit(f"{path} has {len(convs)} convolutions, net.py's network {len(pairs)}")
    for (conv, bn), (weight, bias) in zip(pairs, convs):
        if tuple(conv.weight.shape) != weight.shape:
            raise SystemExit(f"{path}: convolution of shape {weight.shape} where net.py has {tuple(conv.weight.shape)}")
        set_folded(conv, bn, weight, bias)
    head = net.head[-1]
    head.weight.copy_(torch.from_numpy(np.array(head_w)))
    head.bias.copy_(torch.from_numpy(np.array(head_b)))
    preprocess = json.loads(meta.get("preprocess", "{}"))
    return net.eval(), (preprocess.get("width"), preprocess.get("height"))


@torch.no_grad()
def unfold_batch_norms(net, batches):
    """Gives each batch norm of a net from `load` the mean and variance of its input over `batches`
    and the scale and shift that undo them (the eval-mode output does not change)."""
    sums = {}

    def record(bn, inputs, _output):
        x = inputs[0].double()
        n = x.shape[0] * x.shape[2] * x.shape[3]
        s, s2, count = sums.get(bn, (0, 0, 0))
        sums[bn] = (s + x.sum(dim=(0, 2, 3)), s2 + (x * x).sum(dim=(0, 2, 3)), count + n)

    pairs = conv_bn_pairs(net)
    hooks = [bn.register_forward_hook(record) for _, bn in pairs]
    net.eval()
    for x in batches:
        net(x)
    for h in hooks:
        h.remove()
    for _, bn in pairs:
        s, s2, count = sums[bn]
        mean = s / count
        var = (s2 / count - mean * mean).clamp(min=1e-6)
        bias = bn.bias.double().clone()  # the folded convolution bias
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + bias)
    return net


def describe(path):
    """What the card says about a model a run started from or distilled from: its file name, input
    size and training (the `training` metadata and, when train.py's .metrics.json lies beside it, the
    epochs and minutes it records; for a member of an ensemble, 'FILE#N', what the ensemble records
    of that member)."""
    import os

    import onnx

    file, member = split_member(path)
    meta = {p.key: p.value for p in onnx.load(file, load_external_data=False).metadata_props}
    preprocess = json.loads(meta.get("preprocess", "{}"))
    training = json.loads(meta.get("training", "{}") or "{}")
    about = {"file": os.path.basename(file) + (f"#{member}" if member else ""),
             "input": [preprocess.get("width"), preprocess.get("height")]}
    of_member = ensemble_member(file, meta, member)
    if of_member is not None:
        training = of_member["training"] if isinstance(of_member.get("training"), dict) else {}
        about.update({k: training[k] for k in ("epochs", "train_minutes", "seed") if k in training})
        about["member_file"] = of_member.get("file")
        about["validation_accuracy"] = training.get("validation_accuracy")
    about["training"] = training
    metrics = {} if member else run_metrics(file)
    if metrics:
        about.update({k: metrics[k] for k in ("epochs", "train_minutes", "seed") if k in metrics})
        about["validation_accuracy"] = metrics.get("validation", {}).get("accuracy")
    return about
