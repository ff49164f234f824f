"""What every model of the recipe shares on export (the input normalisation and our ONNX metadata), and
reading back the figures a run wrote beside its model."""
import json
import os

# Mean/std of ImageNet-like photos in 0..255 units; the ONNX metadata carries them to the nodes.
MEAN = [124.0, 116.0, 104.0]
STD = [58.0, 57.0, 57.0]


def save_with_metadata(exported_path, path, props):
    """Writes the model torch.onnx exported to `exported_path` as `path` with our metadata `props`
    (values that are not strings are written as JSON), checked, and removes the exported file."""
    import onnx

    m = onnx.load(exported_path)
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, (v if isinstance(v, str) else json.dumps(v))
    m.producer_name = "node-red-contrib-greengrass-ml tools/train"
    onnx.checker.check_model(m)
    onnx.save(m, path)
    os.remove(exported_path)


def run_metrics(model_path):
    """The .metrics.json written beside a model (by train.py: epochs, minutes, what it started from...;
    by ensemble.py: its members), or {} when there is none: the model's metadata records only the recipe."""
    metrics_path = os.path.splitext(model_path)[0] + ".metrics.json"
    if not os.path.exists(metrics_path):
        return {}
    with open(metrics_path) as fh:
        return json.load(fh)
