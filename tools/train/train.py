#!/usr/bin/env python3
"""Train the waste classifier from scratch and export it as a self-describing ONNX model.

Usage (Debian's Python, which owns python3-torch):
  /usr/bin/python3 tools/train/train.py --data ../shared/datasets/trashnet --out models/waste-classifier.onnx

The data folder is laid out as <root>/<class>/<image>.jpg; class names are the sorted folder names.
The train/validation split is read from --split-dir when the lists exist there, otherwise made
(stratified, seeded) and written there, so a retrain sees exactly the same validation photos.
"""
import argparse
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import MEAN, STD, save_with_metadata  # noqa: E402
from net import WasteNet, load_checkpoint  # noqa: E402
import from_onnx  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def parse_args():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of <class>/<image> photos")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--split-dir", default=os.path.join(here, "split"), help="where train.txt/val.txt live")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--width", type=int, default=168)
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--budget-min", type=float, default=0,
                   help="if >0, cut the epoch count (after every epoch, from the epochs' measured times) "
                        "so training fits this many minutes")
    p.add_argument("--widths", default="32,64,128,256",
                   help="channels of the network's four residual stages (net.py)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--channels-last", action="store_true",
                   help="train in channels-last memory layout (same network, about 1.5x faster on CPUs with oneDNN)")
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--cache-dir", default=os.path.join(here, "cache"))
    p.add_argument("--metrics", default="", help="JSON file for validation metrics (default: next to --out)")
    p.add_argument("--no-flip-average", dest="flip_average", action="store_false",
                   help="export the bare network instead of averaging it over the frame and its mirror image")
    p.add_argument("--resume", default="", metavar="STATE",
                   help="the training state file: written after every epoch, and read at start when it "
                        "exists, so a run stopped (a reboot, the end of a working session) goes on where it was")
    p.add_argument("--swa-from", default="", metavar="CHECKPOINT",
                   help="instead of training from scratch, continue a finished run (runs/last.pt of the same --width, --height, "
                        "--widths) with stochastic weight averaging: --swa-epochs at the constant --swa-lr, the weights averaged "
                        "at the end of every epoch, then the batch-norm statistics recomputed for the average")
    p.add_argument("--swa-epochs", type=int, default=15)
    p.add_argument("--swa-lr", type=float, default=0.01)
    p.add_argument("--init-onnx", default="", metavar="MODEL",
                   help="start from the weights of a model this script exported (fine-tuning: your own photos, "
                        "another input size, or distillation) instead of random weights; pair with a smaller --lr")
    p.add_argument("--teacher", nargs="+", default=[], metavar="MODEL",
                   help="distil from these exported models: the mean of their logits (each at its own input size, "
                        "the batch resized) is a soft target beside the labels")
    p.add_argument("--distill-weight", type=float, default=0.7,
                   help="share of the loss that comes from the teachers (the rest from the labels)")
    p.add_argument("--distill-temperature", type=float, default=2.0,
                   help="softmax temperature of the distillation loss")
    p.add_argument("--export-only", default="", metavar="CHECKPOINT",
                   help="skip training: evaluate and export the weights saved in CHECKPOINT (runs/last.pt)")
    return p.parse_args()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def list_dataset(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    items = []
    for ci, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                items.append((f"{c}/{f}", ci))
    if not classes or not items:
        sys.exit(f"no <class>/<image> photos found under {root}")
    return classes, items


def load_or_make_split(items, split_dir, val_fraction, seed):
    train_file, val_file = os.path.join(split_dir, "train.txt"), os.path.join(split_dir, "val.txt")
    if os.path.exists(train_file) and os.path.exists(val_file):
        read = lambda f: [l.strip() for l in open(f) if l.strip() and not l.startswith("#")]
        train_names, val_names = set(read(train_file)), set(read(val_file))
        known = {n for n, _ in items}
        missing = (train_names | val_names) - known
        if missing:
            print(f"warning: {len(missing)} listed photos are not in the data folder", file=sys.stderr)
        new = known - train_names - val_names
        if new:
            print(f"note: {len(new)} photos are in neither list; they go to training", file=sys.stderr)
        return [it for it in items if it[0] not in val_names], [it for it in items if it[0] in val_names]
    rng = random.Random(seed)
    train, val = [], []
    by_class = {}
    for it in items:
        by_class.setdefault(it[1], []).append(it)
    for ci in sorted(by_class):
        group = sorted(by_class[ci])
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction)
        val += group[:n_val]
        train += group[n_val:]
    os.makedirs(split_dir, exist_ok=True)
    for f, part in ((train_file, train), (val_file, val)):
        with open(f, "w") as fh:
            fh.write(f"# {len(part)} photos, seed {seed}; paths relative to the data folder\n")
            fh.writelines(n + "\n" for n, _ in sorted(part))
    return sorted(train), sorted(val)


def load_images(root, items, size, cache_dir, tag):
    """Decode every photo once to size (w, h) uint8 NCHW; cached because decoding dominates start-up."""
    os.makedirs(cache_dir, exist_ok=True)
    digest = hashlib.sha1("\n".join(n for n, _ in items).encode()).hexdigest()[:10]
    key = f"{tag}-{size[0]}x{size[1]}-{len(items)}-{digest}.npy"
    path = os.path.join(cache_dir, key)
    if os.path.exists(path):
        return torch.from_numpy(np.load(path))
    arr = np.empty((len(items), 3, size[1], size[0]), dtype=np.uint8)
    for i, (name, _) in enumerate(items):
        with Image.open(os.path.join(root, name)) as im:
            im = im.convert("RGB")
            # "cover": scale to fill, centre-crop the excess, as the nodes' sharp pipeline does.
            scale = max(size[0] / im.width, size[1] / im.height)
            w, h = max(size[0], round(im.width * scale)), max(size[1], round(im.height * scale))
            im = im.resize((w, h), Image.LANCZOS)
            left, top = (w - size[0]) // 2, (h - size[1]) // 2
            im = im.crop((left, top, left + size[0], top + size[1]))
            arr[i] = np.asarray(im).transpose(2, 0, 1)
    np.save(path, arr)
    return torch.from_numpy(arr)


def augment(batch_u8, out_hw, gen):
    """Conveyor conditions on a whole batch at once: pose (rotation, flips, scale, position) via one
    affine resample, then lighting (brightness, contrast, saturation, white balance), blur and noise."""
    n = batch_u8.shape[0]
    x = batch_u8.float()
    H, W = x.shape[2], x.shape[3]
    aspect = W / H
    rnd = lambda *s: torch.rand(*s, generator=gen)
    angle = (rnd(n) * 2 - 1) * math.radians(30)
    zoom = 0.65 + rnd(n) * 0.55  # sampled extent relative to the frame: <1 zooms in, >1 zooms out
    stretch = torch.exp((rnd(n) * 2 - 1) * 0.1)
    sx, sy = zoom * stretch, zoom / stretch
    flip_x = torch.where(rnd(n) < 0.5, -1.0, 1.0)
    flip_y = torch.where(rnd(n) < 0.5, -1.0, 1.0)
    tx = (rnd(n) * 2 - 1) * (1 - sx).abs().clamp(min=0.1)
    ty = (rnd(n) * 2 - 1) * (1 - sy).abs().clamp(min=0.1)
    c, s = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    # Rotation in pixel space expressed in normalised coordinates of a non-square frame.
    theta[:, 0, 0] = c * sx * flip_x
    theta[:, 0, 1] = -s / aspect * sy * flip_y
    theta[:, 1, 0] = s * aspect * sx * flip_x
    theta[:, 1, 1] = c * sy * flip_y
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (n, 3, out_hw[0], out_hw[1]), align_corners=False)
    if H > out_hw[0] * 1.5:
        x = F.avg_pool2d(x, 2)  # halve first: avoids aliasing on strong down-sampling
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    sat = (0.6 + rnd(n, 1, 1, 1) * 0.8)
    x = gray + (x - gray) * sat
    contrast = 0.65 + rnd(n, 1, 1, 1) * 0.7
    mean_gray = gray.mean(dim=(2, 3), keepdim=True)
    x = mean_gray + (x - mean_gray) * contrast
    x = x * (0.65 + rnd(n, 1, 1, 1) * 0.7)  # brightness
    x = x * (0.9 + rnd(n, 3, 1, 1) * 0.2)  # white balance / colour temperature
    blur = (rnd(n, 1, 1, 1) < 0.2).view(-1).nonzero().view(-1)
    if len(blur):
        # 3x3 box blur of the chosen frames only (blurring the whole batch and selecting cost a third
        # of the augmentation time)
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x + torch.randn(x.shape, generator=gen) * (rnd(n, 1, 1, 1) * 6.0)
    return x.clamp(0, 255)


def learning_rate(step, warmup, total_steps, base):
    """Linear warm-up over `warmup` steps, then a cosine down to 0 at `total_steps`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


def normalise(x):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cutmix(x, y_onehot, gen):
    n, _, H, W = x.shape
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    perm = torch.randperm(n, generator=gen)
    cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(H, (1,), generator=gen)), int(torch.randint(W, (1,), generator=gen))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    return x, lam * y_onehot + (1 - lam) * y_onehot[perm]


def training_batches(train_x, train_y, n_classes, args, gen, memory_format, mix=True):
    """One epoch of augmented training batches in a random order, with smoothed labels and, when mix,
    CutMix on half of them. The order, the augmentation and CutMix's coin and box come from gen;
    CutMix's ratio (and the network's dropout) from the global torch RNG: a resume state saves both."""
    order = torch.randperm(len(train_y), generator=gen)
    for b in range(math.ceil(len(train_y) / args.batch)):
        idx = order[b * args.batch:(b + 1) * args.batch]
        if len(idx) < 8:
            continue
        x = normalise(augment(train_x[idx], (args.height, args.width), gen)).contiguous(memory_format=memory_format)
        y = F.one_hot(train_y[idx], n_classes).float() * 0.9 + 0.1 / n_classes  # label smoothing
        if mix and torch.rand(1, generator=gen).item() < 0.5:
            x, y = cutmix(x, y, gen)
        yield x, y


class FlipAveraged(torch.nn.Module):
    """Averages the logits of a frame and its mirror image: a piece of waste is the same either way
    round, and the average is steadier than either view for twice a very small inference cost."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return 0.5 * (self.net(x) + self.net(torch.flip(x, dims=[3])))


class Teachers:
    """Exported models whose mean logits are soft targets (knowledge distillation, Hinton et al., 2015).
    Each reads the student's normalised batch resized to its own input size (bilinear, as
    ensemble.py's --resize-members does at inference); no mirror-image average, which would double their cost."""

    def __init__(self, paths, classes):
        self.members = []
        for path in paths:
            net, size = from_onnx.load(path, classes)
            self.members.append((net, (size[1], size[0])))

    @torch.no_grad()
    def logits(self, x):
        total = 0
        for net, hw in self.members:
            view = x if tuple(x.shape[2:]) == hw else F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
            total = total + net(view.contiguous())
        return total / len(self.members)


def distillation_loss(student_logits, teacher_logits, temperature):
    """KL divergence between the softened teacher and student distributions, scaled by T^2 so its
    gradients keep their size whatever the temperature."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t


class Ema:
    """Exponential moving average of weights and BN statistics: a steadier final model."""

    def __init__(self, model, decay):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


@torch.no_grad()
def predict(model, images_u8, batch=128):
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch):
        out.append(model(normalise(images_u8[i:i + batch].float())))
    return torch.cat(out)


def metrics(logits, labels, classes):
    pred = logits.argmax(1)
    k = len(classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(labels.tolist(), pred.tolist()):
        cm[t, p] += 1
    per_class = {}
    for i, c in enumerate(classes):
        tp = cm[i, i].item()
        precision = tp / max(cm[:, i].sum().item(), 1)
        recall = tp / max(cm[i, :].sum().item(), 1)
        per_class[c] = {"precision": round(precision, 4), "recall": round(recall, 4), "support": cm[i, :].sum().item()}
    return {
        "accuracy": round((pred == labels).float().mean().item(), 4),
        "per_class": per_class,
        "confusion_matrix": {"rows_true_cols_predicted": classes, "matrix": cm.tolist()},
    }


def export_onnx(model, path, classes, args, extra):
    model.eval()
    dummy = torch.zeros(1, 3, args.height, args.width)
    tmp = path + ".tmp"
    torch.onnx.export(model, dummy, tmp, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=13, do_constant_folding=True)
    preprocess = {"width": args.width, "height": args.height, "resize": "cover", "channels": "RGB",
                  "layout": "NCHW", "dtype": "float32", "mean": MEAN, "std": STD}
    save_with_metadata(tmp, path, {"labels": classes, "preprocess": preprocess, "output": "logits", **extra})


def swa(args, classes, model, memory_format, train_x, train_y, val_x, val_y, gen):
    """Stochastic weight averaging (Izmailov et al., 2018) after a finished cosine run: training goes on
    at a constant learning rate, the weights at the end of each epoch are averaged, and the batch-norm
    statistics are recomputed for the averaged weights (they are not an average of the members')."""
    checkpoint = load_checkpoint(args.swa_from, classes)
    # The network takes any size, so a checkpoint of another resolution would quietly train on: refuse it.
    if checkpoint.get("input", [args.width, args.height]) != [args.width, args.height]:
        raise SystemExit(f"{args.swa_from} was trained at {checkpoint['input'][0]} x {checkpoint['input'][1]}; "
                         f"pass --width {checkpoint['input'][0]} --height {checkpoint['input'][1]}")
    model.load_state_dict(checkpoint["model"])
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=args.swa_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_y) / args.batch)
    average = {k: v.detach().clone() for k, v in model.state_dict().items()}
    averaged = 0
    history = list(checkpoint.get("history", []))
    t_train = time.time()

    for epoch in range(1, args.swa_epochs + 1):
        model.train()
        t_epoch = time.time()
        total = 0.0
        for x, y in training_batches(train_x, train_y, len(classes), args, gen, memory_format):
            loss = torch.sum(-y * F.log_softmax(model(x), 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        averaged += 1
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    average[k].add_(v.detach() - average[k], alpha=1 / averaged)
        print(f"swa epoch {epoch}/{args.swa_epochs} loss {total / steps_per_epoch:.3f} lr {args.swa_lr} {time.time() - t_epoch:.0f}s", flush=True)

    last = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(average)
    # Batch-norm statistics for the averaged weights: a cumulative average over one pass of augmented training photos.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in training_batches(train_x, train_y, len(classes), args, gen, memory_format, mix=False):
            model(x)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    ema = Ema(model, 0.998)  # finish() exports ema.shadow: here the SWA weights
    model.load_state_dict(last)
    minutes = (time.time() - t_train) / 60
    total_minutes = checkpoint.get("train_minutes", 0) + minutes
    history.append({"swa_epochs": args.swa_epochs, "swa_lr": args.swa_lr, "swa_minutes": round(minutes, 1)})
    print(f"SWA: {args.swa_epochs} epochs in {minutes:.0f} min after {checkpoint['epochs']} epochs ({checkpoint.get('train_minutes', 0):.0f} min)", flush=True)
    finish(args, classes, model, ema, val_x, val_y, len(train_y), checkpoint["epochs"] + args.swa_epochs, history, total_minutes,
           averaged="SWA")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    classes, items = list_dataset(args.data)
    train_items, val_items = load_or_make_split(items, args.split_dir, args.val_fraction, args.seed)
    print(f"classes {classes}; train {len(train_items)}, validation {len(val_items)}", flush=True)

    t0 = time.time()
    # Training photos are kept at 2x the model input so crops and zooms keep detail.
    train_x = load_images(args.data, train_items, (args.width * 2, args.height * 2), args.cache_dir, "train")
    val_x = load_images(args.data, val_items, (args.width, args.height), args.cache_dir, "val")
    train_y = torch.tensor([c for _, c in train_items])
    val_y = torch.tensor([c for _, c in val_items])
    print(f"decoded photos in {time.time() - t0:.0f} s", flush=True)

    widths = tuple(int(w) for w in args.widths.split(","))
    model = WasteNet(len(classes), widths=widths)
    print(f"network: widths {widths}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"input {args.width} x {args.height}", flush=True)
    if args.export_only:
        checkpoint = load_checkpoint(args.export_only, classes)
        model.load_state_dict(checkpoint["model"])
        ema = Ema(model, 0.998)
        ema.shadow = checkpoint["ema"]
        finish(args, classes, model, ema, val_x, val_y, len(train_items), checkpoint["epochs"], checkpoint.get("history", []),
               checkpoint.get("train_minutes", 0))
        return
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.init_onnx:
        model, init_size = from_onnx.load(args.init_onnx, classes)
        from_onnx.require_widths(model, args.init_onnx, args.widths)
        # Statistics from augmented training batches of a generator of its own, so the run's random
        # draws are those of a run without --init-onnx.
        calibration = training_batches(train_x, train_y, len(classes), args, torch.Generator().manual_seed(args.seed + 1),
                                       torch.contiguous_format, mix=False)
        from_onnx.unfold_batch_norms(model, (x for _, (x, _) in zip(range(8), calibration)))
        start_acc = (predict(model, val_x).argmax(1) == val_y).float().mean().item()
        print(f"initialised from {args.init_onnx} (trained at {init_size[0]} x {init_size[1]}): validation accuracy "
              f"{start_acc:.4f} without the mirror-image average", flush=True)
    if args.swa_from:
        swa(args, classes, model, memory_format, train_x, train_y, val_x, val_y, gen)
        return
    teachers = Teachers(args.teacher, classes) if args.teacher else None
    model = model.to(memory_format=memory_format)
    ema = Ema(model, 0.998)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_items) / args.batch)
    epochs = args.epochs
    warmup = 3 * steps_per_epoch
    step = 0
    history = []
    t_train = time.time()
    epoch_times = []
    epoch = 0
    # What must match for a saved state to be continued: anything else would silently train another recipe.
    recipe = {k: getattr(args, k) for k in ("width", "height", "widths", "batch", "lr", "seed", "channels_last")}
    recipe["train"] = len(train_items)
    if args.init_onnx or teachers:
        recipe.update(init_onnx=args.init_onnx, teacher=args.teacher, distill_weight=args.distill_weight,
                      distill_temperature=args.distill_temperature)
    if args.resume and os.path.exists(args.resume):
        state = torch.load(args.resume)
        if state["recipe"] != recipe:
            raise SystemExit(f"{args.resume} holds a run of another recipe ({state['recipe']}, this one: {recipe}): "
                             "delete it or pass the same options")
        model.load_state_dict(state["model"])
        ema.shadow = state["ema"]
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        epoch, step, epochs, history = state["epoch"], state["step"], state["epochs"], state["history"]
        t_train = time.time() - state["train_seconds"]
        print(f"resumed {args.resume} after epoch {epoch} of {epochs} ({state['train_seconds'] / 60:.0f} min so far)", flush=True)

    def save_state():
        # Written beside and renamed, so a power cut leaves the previous epoch's state, never half a file.
        tmp = args.resume + ".tmp"
        torch.save({"recipe": recipe, "model": model.state_dict(), "ema": ema.shadow, "optimizer": opt.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step,
                    "epochs": epochs, "history": history, "train_seconds": time.time() - t_train}, tmp)
        os.replace(tmp, args.resume)

    while epoch < epochs:
        epoch += 1
        model.train()
        t_epoch = time.time()
        total_loss = 0.0
        for x, y in training_batches(train_x, train_y, len(classes), args, gen, memory_format):
            lr = learning_rate(step, warmup, epochs * steps_per_epoch, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(x)
            loss = torch.sum(-y * F.log_softmax(logits, 1), 1).mean()
            if teachers:
                loss = (1 - args.distill_weight) * loss + args.distill_weight * distillation_loss(
                    logits, teachers.logits(x), args.distill_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(model)
            step += 1
            total_loss += loss.item()
        dt = time.time() - t_epoch
        epoch_times.append(dt)
        if args.budget_min > 0:
            # Re-estimated after every epoch from the recent epochs' times (the machine may get busier
            # or quieter); the count only ever shrinks, so the cosine schedule ends early rather than late.
            recent = sorted(epoch_times[-10:])[len(epoch_times[-10:]) // 2]
            left = args.budget_min * 60 - (time.time() - t_train)
            fit = max(10, epoch + int(left / max(recent, 1e-3)))
            if fit < epochs:
                print(f"epochs take {recent:.0f} s: cutting {epochs} epochs to {fit} to fit {args.budget_min} min", flush=True)
                epochs = fit
        line = f"epoch {epoch}/{epochs} loss {total_loss / steps_per_epoch:.3f} lr {lr:.4f} {dt:.0f}s"
        if epoch % 5 == 0 or epoch == epochs:
            acc = (predict(model, val_x).argmax(1) == val_y).float().mean().item()
            line += f" val_acc {acc:.4f}"
            history.append({"epoch": epoch, "val_acc": round(acc, 4)})
        print(line, flush=True)
        if args.resume:
            save_state()

    train_minutes = (time.time() - t_train) / 60
    # Keep the weights before export so a failed export never costs a retrain.
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs"), exist_ok=True)
    torch.save({"model": model.state_dict(), "ema": ema.shadow, "classes": classes, "epochs": epochs,
                "history": history, "train_minutes": train_minutes, "input": [args.width, args.height]},
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs", "last.pt"))
    finish(args, classes, model, ema, val_x, val_y, len(train_items), epochs, history, train_minutes)


def finish(args, classes, model, ema, val_x, val_y, train_count, epochs, history, train_minutes, averaged="EMA"):
    raw = metrics(predict(model, val_x), val_y, classes)
    model.load_state_dict(ema.shadow)
    ema_only = metrics(predict(model, val_x), val_y, classes)
    model = model.to(memory_format=torch.contiguous_format)
    exported = FlipAveraged(model) if args.flip_average else model
    final = metrics(predict(exported, val_x), val_y, classes)
    print(f"validation accuracy: last weights {raw['accuracy']}, {averaged} weights {ema_only['accuracy']}, "
          f"exported ({'flip-averaged ' if args.flip_average else ''}{averaged}) {final['accuracy']}", flush=True)
    summary = {
        "classes": classes, "train_photos": train_count, "validation_photos": len(val_y),
        "epochs": epochs, "seed": args.seed, "train_minutes": round(train_minutes, 1), "threads": args.threads,
        "validation_last_weights": raw["accuracy"], "validation_ema_weights": ema_only["accuracy"],
        "averaged_weights": averaged,  # what validation_ema_weights measured: the EMA, or the SWA average
        "flip_average": args.flip_average, "input": [args.width, args.height], "widths": args.widths,
        "validation": final, "history": history,
        "init_onnx": from_onnx.describe(args.init_onnx) if args.init_onnx else None,
        "teachers": [from_onnx.describe(t) for t in args.teacher],
        "distillation": {"weight": args.distill_weight, "temperature": args.distill_temperature} if args.teacher else None,
        "torch": torch.__version__,
    }
    model = exported
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export_onnx(model, args.out, classes, args, {
        "model_name": "waste-classifier", "training": json.dumps({"dataset": os.path.basename(os.path.normpath(args.data)),
                                                                   "epochs": epochs, "seed": args.seed,
                                                                   **({"init_from": os.path.basename(args.init_onnx)} if args.init_onnx else {}),
                                                                   **({"distilled_from": [os.path.basename(t) for t in args.teacher]} if args.teacher else {}),
                                                                   "validation_accuracy": final["accuracy"]})})
    metrics_path = args.metrics or os.path.splitext(args.out)[0] + ".metrics.json"
    with open(metrics_path, "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) and {metrics_path}", flush=True)


if __name__ == "__main__":
    main()
