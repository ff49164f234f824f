#!/usr/bin/env python3
"""Fold several trained classifiers into ONE ONNX graph that averages their logits.

Usage (Debian's Python, which owns python3-onnx; evaluation needs `npx tsc -p .` and Node):
  /usr/bin/python3 tools/train/ensemble.py --members tools/train/runs/one.onnx tools/train/runs/other-seed.onnx \
      --out ensemble.onnx

The members must come from train.py with the same labels, pre-processing and output (they are
checked): typically the same recipe and split with different --seed. Every member's nodes and
weights are copied under a prefix (m0/, m1/ ...), all read the one `input`, and a Mean node turns
their logits into `logits`; opset, batch dimension and metadata contract stay those of the members,
and the `training` metadata describes the ensemble and each member.

With --resize-members, members may take a different input size (everything else in `preprocess`
the same, NCHW): the ensemble keeps the FIRST member's input and pre-processing, and each member of
another size reads that input resized to its own (a Resize node, bilinear without antialiasing).
Such a member is then also evaluated as it runs inside the ensemble (resized input) beside its own
pre-processing, since the resize moves its accuracy a little.

With --single-view, each member drops the mirror-image half of train.py's export (the average of the
frame's and its mirror image's logits, two passes of the network): one pass per member, so two
members cost about what one flip-averaged member does. --views gives each member its own view:
`both` (as exported), `frame` (the single view) or `mirror` (one pass over the mirror image), so two
members can share the two views of the flip average between them: `--views frame mirror`.

Weights are stored as float16 by default (--weights float32 keeps them as they are): each float16
initialiser feeds a Cast to float32, which onnxruntime folds into a constant when it loads the
model, so inference still runs in float32 at the same speed while the file is half the size.

Unless --no-eval, the ensemble and each member are then evaluated on the validation photos through
the collection's own pipeline (tools/evaluate.js: sharp pre-processing, onnxruntime-node), the
ensemble's logits are checked against the mean of the members' logits, and the figures are written
to a .metrics.json beside --out.
"""
import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export import run_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONTRACT_KEYS = ("labels", "preprocess", "output")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", nargs="+", required=True, help="ONNX classifiers written by train.py")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--weights", choices=("float16", "float32"), default="float16",
                   help="how the weights are stored in the file (inference is float32 either way)")
    p.add_argument("--metrics", default="", help="JSON file for the metrics (default: next to --out)")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "trashnet"),
                   help="photo folder for the evaluation")
    p.add_argument("--split", default=os.path.join(HERE, "split", "val.txt"), help="validation list")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="only merge and check the graph")
    p.add_argument("--resize-members", action="store_true",
                   help="allow members with another input size: they read the first member's input, resized")
    p.add_argument("--single-view", action="store_true",
                   help="drop each member's mirror-image half (train.py's flip average): half the cost per member "
                        "(the same as --views frame for every member)")
    p.add_argument("--views", nargs="+", choices=tuple(VIEWS), metavar="VIEW",
                   help="one per member: 'both' (as train.py exports it: the frame and its mirror image), 'frame' "
                        "(one pass over the frame) or 'mirror' (one pass over its mirror image)")
    return p.parse_args()


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def rename_member(model, prefix, shared_input):
    """Returns the member's graph parts with every name prefixed except the shared input."""
    g = model.graph
    (inp,) = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    (out,) = g.output
    rename = lambda name: name if name == "" else (shared_input if name == inp.name else prefix + name)
    nodes = []
    for n in g.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = prefix + (n.name or f"{n.op_type}_{len(nodes)}")
        m.input[:] = [rename(x) for x in n.input]
        m.output[:] = [rename(x) for x in n.output]
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            sys.exit(f"{n.op_type} node with a subgraph: not supported by this merge")
        nodes.append(m)
    inits = []
    for t in g.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = prefix + t.name
        inits.append(c)
    infos = []
    for v in g.value_info:
        c = onnx.ValueInfoProto()
        c.CopyFrom(v)
        c.name = prefix + v.name
        infos.append(c)
    return nodes, inits, infos, inp, rename(out.name), out


def single_view(model, path):
    """The member without its mirror-image half. train.py exports 0.5 * (net(x) + net(flip(x))) as
    two copies of the network; this keeps the copy that reads the input unflipped, and its weights."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    (out,) = g.output
    (inp,) = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]

    def upstream(name):
        """Every tensor name the value `name` is computed from (itself included)."""
        names, stack = set(), [name]
        while stack:
            x = stack.pop()
            if x not in names:
                names.add(x)
                stack += list(producer[x].input) if x in producer else []
        return names

    mul = producer.get(out.name)
    add = next((producer[x] for x in (mul.input if mul is not None and mul.op_type == "Mul" else [])
                if x in producer and producer[x].op_type == "Add"), None)
    flipped = {n.output[0] for n in g.node if n.op_type == "Slice" and inp in n.input}
    direct = [x for x in (add.input if add is not None else []) if not upstream(x) & flipped]
    if len(direct) != 1:
        sys.exit(f"{path}: no mirror-image average at its output (expected train.py's 0.5 * (a + b)) to drop")
    keep = upstream(direct[0])
    nodes = [n for n in g.node if n.output[0] in keep] + [helper.make_node("Identity", [direct[0]], [out.name], name="single_view")]
    inits = [t for t in g.initializer if t.name in keep]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model


def mirror_view(model, path):
    """One pass of the member over the mirror image of the frame: its single view, reading the input
    reversed along the width (what train.py's export feeds its mirror-image half)."""
    model = single_view(model, path)
    g = model.graph
    (inp,) = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
    mirrored = inp + "/mirror"
    for n in g.node:
        n.input[:] = [mirrored if x == inp else x for x in n.input]
    consts = {"starts": -1, "ends": -(2 ** 62), "axes": 3, "steps": -1}
    g.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), f"mirror/{k}") for k, v in consts.items())
    flip = helper.make_node("Slice", [inp] + [f"mirror/{k}" for k in consts], [mirrored], name="mirror_view")
    nodes = [flip] + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


VIEWS = {"both": None, "frame": single_view, "mirror": mirror_view}
VIEW_WORDS = {"both": "the frame and its mirror image (two passes)", "frame": "single: the frame",
              "mirror": "single: the mirror image of the frame"}


def store_float16(nodes, inits):
    """float32 initialisers -> float16 initialisers + Cast nodes to the original float32 name."""
    casts, stored = [], []
    for t in inits:
        if t.data_type != TensorProto.FLOAT:
            stored.append(t)
            continue
        w = numpy_helper.to_array(t)
        half = w.astype(np.float16)
        if not np.all(np.isfinite(half)) and np.all(np.isfinite(w)):
            sys.exit(f"{t.name} does not fit in float16")
        stored.append(numpy_helper.from_array(half, t.name + "/f16"))
        casts.append(helper.make_node("Cast", [t.name + "/f16"], [t.name], name=t.name + "/cast", to=TensorProto.FLOAT))
    return casts + nodes, stored


def member_size(model):
    """(width, height) when the member's input must be resized from the ensemble's, else None."""
    pre = json.loads(metadata(model)["preprocess"])
    return pre["width"], pre["height"]


def same_preprocess(a, b, resize):
    if not resize:
        return a == b
    strip = lambda p: {k: v for k, v in json.loads(p).items() if k not in ("width", "height")}
    return a is not None and b is not None and strip(a) == strip(b) and json.loads(a).get("layout") == "NCHW"


def resize_nodes(prefix, size):
    """input [N, C, h0, w0] -> prefix + 'resized_input' [N, C, height, width], bilinear."""
    width, height = size
    out = prefix + "resized_input"
    inits = [numpy_helper.from_array(np.array([0], np.int64), prefix + "resize/start"),
             numpy_helper.from_array(np.array([2], np.int64), prefix + "resize/end"),
             numpy_helper.from_array(np.array([height, width], np.int64), prefix + "resize/hw")]
    nodes = [
        helper.make_node("Shape", ["input"], [prefix + "resize/shape"], name=prefix + "resize/shape"),
        helper.make_node("Slice", [prefix + "resize/shape", prefix + "resize/start", prefix + "resize/end"],
                         [prefix + "resize/nc"], name=prefix + "resize/nc"),
        helper.make_node("Concat", [prefix + "resize/nc", prefix + "resize/hw"], [prefix + "resize/sizes"],
                         name=prefix + "resize/sizes", axis=0),
        helper.make_node("Resize", ["input", "", "", prefix + "resize/sizes"], [out], name=prefix + "resize",
                         mode="linear", coordinate_transformation_mode="half_pixel"),
    ]
    return nodes, inits, out


def merge(members, weights, resize=False, input_model=None):
    """input_model (default: the first member) gives the ensemble its input and pre-processing."""
    models = [onnx.load(p) for p in members]
    reference = input_model or models[0]
    first = metadata(reference)
    for path, m in zip(members, models):
        meta = metadata(m)
        for key in CONTRACT_KEYS:
            same = same_preprocess(meta.get(key), first.get(key), resize) if key == "preprocess" else \
                meta.get(key) == first.get(key)
            if not same:
                sys.exit(f"{path}: metadata {key!r} differs from {members[0]}'s; members must share labels, "
                         "pre-processing and output" + ("" if resize else " (--resize-members allows another input size)"))
        if [(o.domain, o.version) for o in m.opset_import] != [(o.domain, o.version) for o in reference.opset_import]:
            sys.exit(f"{path}: opset differs from {members[0]}'s")
    nodes, inits, infos, outputs = [], [], [], []
    _, _, _, ref_inp, _, ref_out = rename_member(reference, "ref/", "input")
    shared_input = onnx.ValueInfoProto()
    shared_input.CopyFrom(ref_inp)
    shared_input.name = "input"
    out_info = onnx.ValueInfoProto()
    out_info.CopyFrom(ref_out)
    out_info.name = "logits"
    for i, m in enumerate(models):
        prefix = f"m{i}/"
        member_input = "input"
        if member_size(m) != member_size(reference):
            r_nodes, r_inits, member_input = resize_nodes(prefix, member_size(m))
            nodes += r_nodes
            inits += r_inits
        n, t, v, inp, out_name, out = rename_member(m, prefix, member_input)
        if member_input == "input" and inp.type != shared_input.type:
            sys.exit(f"{members[i]}: input type/shape differs from {members[0]}'s")
        nodes += n
        inits += t
        infos += v
        outputs.append(out_name)
    if weights == "float16":
        nodes, inits = store_float16(nodes, inits)
    nodes.append(helper.make_node("Mean", outputs, ["logits"], name="ensemble/mean"))
    graph = helper.make_graph(nodes, "waste-classifier-ensemble", [shared_input], [out_info], inits, value_info=infos)
    model = helper.make_model(graph, opset_imports=list(models[0].opset_import),
                              producer_name="node-red-contrib-greengrass-ml tools/train/ensemble.py")
    model.ir_version = models[0].ir_version
    return model, models


def member_run(path):
    """What train.py's .metrics.json beside a member says about its run (minutes, epochs, the model it
    started from), for the card."""
    metrics = run_metrics(path)
    if "members" in metrics:  # an ensemble's own metrics: no run of its own
        return {}
    run = {k: metrics[k] for k in ("epochs", "seed", "train_minutes", "threads", "input") if k in metrics}
    run.update({k: metrics[k] for k in ("init_onnx", "teachers") if metrics.get(k)})
    return run


def evaluate(model_path, args, workdir, tag):
    out = os.path.join(workdir, f"{tag}.json")
    subprocess.run(["node", os.path.join(ROOT, "tools", "evaluate.js"), "--model", model_path, "--data", args.data,
                    "--split", args.split, "--json", out, "--logits"], check=True)
    with open(out) as fh:
        return json.load(fh)


def main():
    args = parse_args()
    if len(args.members) < 2:
        sys.exit("an ensemble needs at least two members")
    names = [os.path.basename(p) for p in args.members]
    run_figures = [member_run(p) for p in args.members]
    if args.views and args.single_view:
        sys.exit("--single-view and --views: give one of them")
    if args.views and len(args.views) != len(args.members):
        sys.exit(f"--views needs one view per member ({len(args.members)}), got {len(args.views)}")
    views = args.views or ["frame" if args.single_view else "both"] * len(args.members)
    if any(v != "both" for v in views):
        # The members as they run inside the ensemble, so that each is also evaluated that way.
        folder = tempfile.mkdtemp(prefix="member-views-")
        atexit.register(shutil.rmtree, folder, True)
        paths = []
        for i, (p, view) in enumerate(zip(args.members, views)):
            if VIEWS[view] is None:
                paths.append(p)
                continue
            paths.append(os.path.join(folder, f"member{i}-{view}.onnx"))
            onnx.save(VIEWS[view](onnx.load(p), p), paths[-1])
        args.members = paths
    model, members = merge(args.members, args.weights, args.resize_members)
    member_training = []
    for name, m, view, run in zip(names, members, views, run_figures):
        t = metadata(m).get("training", "{}")
        try:
            t = json.loads(t)
        except ValueError:
            pass
        if isinstance(t, dict):
            t.update(run)
        member_training.append({"file": name, "training": t, "view": VIEW_WORDS[view]})
    props = dict(metadata(members[0]))
    training = {"ensemble": f"mean of the logits of {len(members)} members"
                            + (", each without its mirror-image half" if args.single_view else "")
                            + (f", views: {', '.join(views)}" if args.views else ""),
                "weights_stored_as": args.weights,
                "members": member_training}
    props["training"] = json.dumps(training)
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    onnx.save(model, tmp)
    size = os.path.getsize(tmp)
    print(f"merged {len(members)} members: {len(model.graph.node)} nodes, weights as {args.weights}, "
          f"{size / 1e6:.2f} MB", flush=True)
    if not args.evaluate:
        os.replace(tmp, args.out)
        print(f"wrote {args.out} (not evaluated)")
        return

    with tempfile.TemporaryDirectory() as workdir:
        ens = evaluate(tmp, args, workdir, "ensemble")
        evals = [evaluate(p, args, workdir, f"member{i}") for i, p in enumerate(args.members)]
        # A resized member, alone, as it runs inside the ensemble (the ensemble's input, resized).
        inside = []
        for i, (p, m) in enumerate(zip(args.members, members)):
            if member_size(m) == member_size(members[0]):
                inside.append(evals[i])
                continue
            alone, _ = merge([p], args.weights, True, input_model=members[0])
            for k, v in metadata(members[0]).items():
                e = alone.metadata_props.add()
                e.key, e.value = k, v
            alone_path = os.path.join(workdir, f"member{i}-resized.onnx")
            onnx.save(alone, alone_path)
            inside.append(evaluate(alone_path, args, workdir, f"member{i}-resized"))
    ens_logits = np.array([r["logits"] for r in ens["logits"]])
    mean_logits = np.mean([[r["logits"] for r in e["logits"]] for e in inside], axis=0)
    deviation = float(np.abs(ens_logits - mean_logits).max())
    same_top1 = int((ens_logits.argmax(1) == mean_logits.argmax(1)).sum())
    print(f"ensemble vs mean of the members' logits: max difference {deviation:.2e}, same top-1 on "
          f"{same_top1}/{len(ens_logits)} photos", flush=True)
    # float32 weights must reproduce the mean exactly (up to summation order); float16 storage
    # rounds each weight by at most 1 part in 2048, which moves logits by about 1e-3.
    if deviation > (1e-4 if args.weights == "float32" else 0.05):
        sys.exit("the merged graph does not compute the mean of its members")

    strip = lambda e: {k: v for k, v in e.items() if k not in ("logits", "model")}
    training["validation_accuracy"] = ens["accuracy"]
    training["validation_measured_by"] = "tools/evaluate.js (sharp pre-processing, onnxruntime-node)"
    del model.metadata_props[:]
    props["training"] = json.dumps(training)
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.out)
    os.remove(tmp)
    summary = {
        "classes": json.loads(props["labels"]),
        "ensemble": training["ensemble"],
        "weights_stored_as": args.weights,
        "bytes": os.path.getsize(args.out),
        "evaluated_with": "tools/evaluate.js (sharp pre-processing per the metadata, onnxruntime-node)",
        "validation_photos": ens["photos"],
        "validation": strip(ens),
        "check": {"max_abs_difference_from_member_mean": deviation, "same_top1_as_member_mean": same_top1},
        "members": [dict({"file": t["file"], "view": t["view"], "training": t["training"], "validation": strip(e)},
                         **({"validation_inside_ensemble_resized_input": strip(r)} if r is not e else {}))
                    for t, e, r in zip(member_training, evals, inside)],
    }
    metrics_path = args.metrics or os.path.splitext(args.out)[0] + ".metrics.json"
    with open(metrics_path, "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"validation accuracy through the pipeline: ensemble {ens['accuracy']}, members "
          + ", ".join(str(e["accuracy"]) + (f" ({r['accuracy']} on the resized input)" if r is not e else "")
                      for e, r in zip(evals, inside)), flush=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) and {metrics_path}", flush=True)


if __name__ == "__main__":
    main()
