"""Train a classifier of belt crops: the material of one item cut from a conveyor frame by its box.

The conveyor detector finds items well but names their material poorly (half right); the waste
classifier names it well on white-board photos but not on belt crops (36-40 %). This recipe trains
the classifier's network on what a second stage would see: items cut from generated belt scenes
(tools/train/scenes.py, training photos only) by their box, with the box jittered as a detector's
would be. Validation crops come from scenes of validation photos only, cut by their true box.

The crop rule, the same here and wherever the model is used (it is in the model's metadata as
`crop`): the box grown by `margin` around its centre, clipped to the frame, resized to the input
size without keeping the aspect ratio (`fill`).

Usage (Debian's Python, which owns python3-torch):
  /usr/bin/python3 tools/train/train_crops.py --data ../shared/datasets/trashnet --out /tmp/belt-crops.onnx
"""
import argparse
import hashlib
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import from_onnx  # noqa: E402
import scenes  # noqa: E402
from export import MEAN, STD, save_with_metadata  # noqa: E402
from net import WasteNet, load_checkpoint  # noqa: E402
from train import Ema, FlipAveraged, augment, learning_rate, normalise  # noqa: E402

CROP_MARGIN = 1.15


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masks", choices=scenes.MASKS, default="colour", help="cut-outs: scenes.py --masks")
    p.add_argument("--data", required=True, help="the TrashNet folder (<class>/<photo>)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--size", type=int, default=96, help="input width and height")
    p.add_argument("--train-crops", type=int, default=12000, help="crops made once from training scenes")
    p.add_argument("--val-crops", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--budget-min", type=float, default=0, help="if >0, cut the epoch count to fit this many minutes")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--widths", default="32,64,128,256")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--init", default="", metavar="CHECKPOINT",
                   help="start from the weights of a waste classifier run (train.py's runs/last.pt, same --widths): "
                        "it already knows the materials on white boards, so belt crops take far fewer epochs")
    p.add_argument("--init-onnx", default="", metavar="MODEL",
                   help="start from the weights in an ONNX file train.py exported (FILE#N names an ensemble's member), "
                        "as --init does from a checkpoint: the shipped models/waste-classifier.onnx needs no training run")
    args = p.parse_args()
    if args.init and args.init_onnx:
        p.error("--init and --init-onnx: pass one")
    return args


def crop_box(box, frame_w, frame_h, margin=CROP_MARGIN):
    """The crop rule: the box grown by `margin` around its centre, clipped to the frame."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * margin, (y1 - y0) * margin
    return (max(0, round(cx - w / 2)), max(0, round(cy - h / 2)),
            min(frame_w, round(cx + w / 2)), min(frame_h, round(cy + h / 2)))


def jittered(rng, box):
    """A detector's box for the item: a little off in size and position."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * w
    cy = (y0 + y1) / 2 + rng.uniform(-0.08, 0.08) * h
    w *= rng.uniform(0.88, 1.15)
    h *= rng.uniform(0.88, 1.15)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def make_crops(rng, cutouts, count, size, jitter):
    """`count` crops (uint8 NCHW) and their classes, from balanced belt scenes."""
    pool = scenes.BeltPool(rng, size=60)
    classes = scenes.by_class(cutouts)
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    n = 0
    while n < count:
        image, boxes, found = scenes.random_scene(rng, cutouts, pool=pool, classes=classes)
        for box, cls in zip(boxes, found):
            if n == count:
                break
            region = crop_box(jittered(rng, box) if jitter else box, image.width, image.height)
            if region[2] - region[0] < 8 or region[3] - region[1] < 8:
                continue
            images[n] = np.asarray(image.crop(region).resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
            labels[n] = cls
            n += 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def cached_crops(split, seed, cutouts, count, size, jitter, cache_dir=os.path.join(HERE, "cache")):
    """make_crops, kept on disk: the same crops serve every run that compares training settings, and
    making them takes minutes. The key covers the cut-outs themselves and the code that draws the scenes
    and cuts the crops, so better masks or new belts never reuse stale crops."""
    key = hashlib.sha1(f"{seed}|{count}|{size}|{jitter}".encode())
    for source in (scenes.__file__, __file__):
        with open(source, "rb") as f:
            key.update(f.read())
    for rgba, cls in cutouts:
        key.update(rgba.tobytes())
        key.update(bytes([cls]))
    path = os.path.join(cache_dir, f"crops-{split}-{count}-{size}-{key.hexdigest()[:10]}.npz")
    if os.path.exists(path):
        data = np.load(path)
        return torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
    images, labels = make_crops(np.random.default_rng(seed), cutouts, count, size, jitter)
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, images=images.numpy(), labels=labels.numpy())
    os.replace(path + ".tmp", path)
    return images, labels


@torch.no_grad()
def accuracy(model, x, y, batch=256):
    model.eval()
    right = 0
    per_class = {}
    for i in range(0, len(x), batch):
        pred = model(normalise(x[i:i + batch].float())).argmax(1)
        right += int((pred == y[i:i + batch]).sum())
        for t, p in zip(y[i:i + batch].tolist(), pred.tolist()):
            r = per_class.setdefault(t, [0, 0])
            r[0] += int(t == p)
            r[1] += 1
    return right / len(x), {c: r[0] / r[1] for c, r in sorted(per_class.items())}


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    train_cut, classes = scenes.load_cutouts(args.data, "train", masks=args.masks)
    val_cut, _ = scenes.load_cutouts(args.data, "val", masks=args.masks)
    # Training crops at 1.25x the input size, so augmentation's zoom and rotation keep detail.
    big = round(args.size * 1.25)
    train_x, train_y = cached_crops("train", args.seed, train_cut, args.train_crops, big, jitter=True)
    val_x, val_y = cached_crops("val", args.seed + 1, val_cut, args.val_crops, args.size, jitter=False)
    print(f"classes {classes}; {len(train_x)} training crops, {len(val_x)} validation crops, ready in {time.time() - t0:.0f} s",
          flush=True)

    model = WasteNet(len(classes), widths=tuple(int(w) for w in args.widths.split(",")))
    if args.init_onnx:
        model, _ = from_onnx.load(args.init_onnx, classes)
        from_onnx.require_widths(model, args.init_onnx, args.widths)
        # Batch-norm statistics from crops, not photos: the network's inputs here.
        calibration_gen = torch.Generator().manual_seed(args.seed + 1)  # the run's own draws stay as without it
        calibration = (normalise(augment(train_x[i:i + args.batch], (args.size, args.size), calibration_gen))
                       for i in range(0, 8 * args.batch, args.batch))
        from_onnx.unfold_batch_norms(model, calibration)
        print(f"starting from {args.init_onnx}: {accuracy(model, val_x, val_y)[0]:.4f} on the validation crops", flush=True)
    if args.init:
        checkpoint = load_checkpoint(args.init, classes)
        model.load_state_dict(checkpoint["ema"])
        print(f"starting from {args.init} ({checkpoint['epochs']} epochs on the photos)", flush=True)
    ema = Ema(model, 0.995)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = math.ceil(len(train_x) / args.batch)
    epochs, step, warmup = args.epochs, 0, 2 * steps
    t_train, times = time.time(), []
    epoch = 0
    while epoch < epochs:
        epoch += 1
        model.train()
        t_epoch = time.time()
        order = torch.randperm(len(train_x), generator=gen)
        total = 0.0
        for b in range(steps):
            idx = order[b * args.batch:(b + 1) * args.batch]
            lr = learning_rate(step, warmup, epochs * steps, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x = normalise(augment(train_x[idx], (args.size, args.size), gen))
            y = F.one_hot(train_y[idx], len(classes)).float() * 0.9 + 0.1 / len(classes)
            loss = torch.sum(-y * F.log_softmax(model(x), 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(model)
            step += 1
            total += loss.item()
        times.append(time.time() - t_epoch)
        if args.budget_min > 0:
            recent = sorted(times[-5:])[len(times[-5:]) // 2]
            fit = max(5, epoch + int((args.budget_min * 60 - (time.time() - t_train)) / max(recent, 1e-3)))
            if fit < epochs:
                print(f"epochs take {recent:.0f} s: cutting {epochs} epochs to {fit}", flush=True)
                epochs = fit
        line = f"epoch {epoch}/{epochs} loss {total / steps:.3f} lr {lr:.4f} {times[-1]:.0f}s"
        if epoch % 3 == 0 or epoch == epochs:
            line += f" val_acc {accuracy(model, val_x, val_y)[0]:.4f}"
        print(line, flush=True)

    model.load_state_dict(ema.shadow)
    acc, per_class = accuracy(model, val_x, val_y)
    minutes = (time.time() - t_train) / 60
    print(f"validation crops: {acc:.4f} ({', '.join(f'{classes[c]} {a:.2f}' for c, a in per_class.items())}); "
          f"{epochs} epochs in {minutes:.0f} min", flush=True)
    exported = FlipAveraged(model).eval()
    tmp = args.out + ".tmp"
    torch.onnx.export(exported, torch.zeros(1, 3, args.size, args.size), tmp, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=13, do_constant_folding=True)
    preprocess = {"width": args.size, "height": args.size, "resize": "fill", "channels": "RGB", "layout": "NCHW",
                  "dtype": "float32", "mean": MEAN, "std": STD}
    save_with_metadata(tmp, args.out, {
        "labels": classes, "preprocess": preprocess, "output": "logits",
        "crop": {"margin": CROP_MARGIN, "resize": "fill"},
        "description": f"belt-crop material classifier; {acc:.3f} on {len(val_x)} validation crops; {epochs} epochs, {minutes:.0f} min"
                       + (f", from {os.path.basename(args.init or args.init_onnx)}" if args.init or args.init_onnx else ""),
    })
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
