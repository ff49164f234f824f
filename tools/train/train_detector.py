#!/usr/bin/env python3
"""Train the conveyor detector from scratch on synthetic belt scenes (scenes.py) and export it as
a self-describing ONNX model in the YOLOv8 layout that ml-inference decodes.

Usage (Debian's Python, which owns python3-torch):
  nice -n 19 /usr/bin/python3 tools/train/train_detector.py --data ../shared/datasets/trashnet \
      --out models/conveyor-detector.onnx --budget-min 150

The network is anchor-free with one output grid at stride 16 (items on a belt are 40-180 pixels
in a 320x240 frame, so one scale is enough): every cell predicts its distances to the four sides
of a box and one score per class. The exported graph decodes the boxes itself and returns
[batch, 4 + classes, cells] with (cx, cy, w, h) in model-input pixels and sigmoid class scores,
which is the Ultralytics v8 layout. Training scenes are made on the fly from training photos only;
validation scenes (fixed, seeded) from validation photos only.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import from_onnx  # noqa: E402
import scenes  # noqa: E402
from export import MEAN, STD, save_with_metadata  # noqa: E402
from net import BasicBlock, conv_bn  # noqa: E402

STRIDE = 16


class ConveyorDetector(nn.Module):
    def __init__(self, num_classes, widths=(32, 64, 128, 192), neck=96):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(conv_bn(3, 24, 2), conv_bn(24, widths[0], 2))
        self.s4 = BasicBlock(widths[0], widths[0], 1)
        self.s8 = nn.Sequential(BasicBlock(widths[0], widths[1], 2), BasicBlock(widths[1], widths[1], 1))
        self.s16 = nn.Sequential(BasicBlock(widths[1], widths[2], 2), BasicBlock(widths[2], widths[2], 1))
        self.s32 = nn.Sequential(BasicBlock(widths[2], widths[3], 2), BasicBlock(widths[3], widths[3], 1))
        self.lat16 = conv_bn(widths[2], neck, k=1)
        self.lat32 = conv_bn(widths[3], neck, k=1)
        self.fuse = nn.Sequential(conv_bn(neck, neck), conv_bn(neck, neck))
        self.cls = nn.Conv2d(neck, num_classes, 1)
        self.box = nn.Conv2d(neck, 4, 1)
        # Start from a low prior score so the many empty cells do not swamp the first steps.
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))

    def raw(self, x):
        f16 = self.s16(self.s8(self.s4(self.stem(x))))
        f32 = self.s32(f16)
        up = F.interpolate(self.lat32(f32), size=f16.shape[-2:], mode="nearest")
        f = self.fuse(self.lat16(f16) + up)
        return self.cls(f), self.box(f)

    forward = raw  # what from_onnx.unfold_batch_norms runs


def grid_centres(h, w):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([(xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE], -1).reshape(-1, 2)


def decode_ltrb(box_raw):
    """[B, 4, H, W] raw -> distances to the sides in pixels, [B, H*W, 4]."""
    b = box_raw.flatten(2).transpose(1, 2)
    return F.softplus(b) * STRIDE * 2


class Exported(nn.Module):
    """The deployed graph: decoded boxes (cx, cy, w, h) and sigmoid scores, [batch, 4 + C, cells]."""

    def __init__(self, model, h, w):
        super().__init__()
        self.model = model
        self.register_buffer("centres", grid_centres(h // STRIDE, w // STRIDE))

    def forward(self, x):
        cls, box = self.model.raw(x)
        ltrb = decode_ltrb(box)
        x0 = self.centres[None, :, 0] - ltrb[..., 0]
        y0 = self.centres[None, :, 1] - ltrb[..., 1]
        x1 = self.centres[None, :, 0] + ltrb[..., 2]
        y1 = self.centres[None, :, 1] + ltrb[..., 3]
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], 1)
        return torch.cat([boxes, torch.sigmoid(cls.flatten(2))], 1)


# ---------------------------------------------------------------------------- data

class SceneStream(torch.utils.data.IterableDataset):
    """Endless training batches of fresh scenes, made in a worker process."""

    def __init__(self, cutouts, batch, seed, balanced):
        self.cutouts, self.batch, self.seed = cutouts, batch, seed
        self.classes = scenes.by_class(cutouts) if balanced else None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + (info.id if info else 0) * 7919 + int(time.time()))
        pool = scenes.BeltPool(rng)
        n = 0
        while True:
            if n and n % 400 == 0:
                pool = scenes.BeltPool(rng)  # fresh belts now and then
            yield make_batch(rng, self.cutouts, self.batch, pool, self.classes)
            n += 1


def make_batch(rng, cutouts, batch, pool, classes=None):
    imgs, targets = [], []
    for _ in range(batch):
        im, boxes, labels = scenes.random_scene(rng, cutouts, pool=pool, classes=classes)
        imgs.append(np.asarray(im))
        targets.append((np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    return x, targets


def normalise(x):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------- loss

def assign(centres, boxes, radius=1.5 * STRIDE):
    """Each cell whose centre is inside a box and within `radius` of its centre learns that box (the
    smallest when several qualify); the cell holding the box's centre always does."""
    n = centres.shape[0]
    owner = torch.full((n,), -1, dtype=torch.long)
    if boxes.shape[0] == 0:
        return owner
    cx, cy = centres[:, 0:1], centres[:, 1:2]
    b = boxes
    inside = (cx > b[:, 0]) & (cx < b[:, 2]) & (cy > b[:, 1]) & (cy < b[:, 3])
    bcx, bcy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    near = ((cx - bcx).abs() < radius) & ((cy - bcy).abs() < radius)
    ok = inside & near
    area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).expand(n, -1)
    cost = torch.where(ok, area, torch.full_like(area, float("inf")))
    best, arg = cost.min(1)
    owner[best.isfinite()] = arg[best.isfinite()]
    d = (cx - bcx) ** 2 + (cy - bcy) ** 2
    centre_cell = d.argmin(0)
    for k in range(b.shape[0]):
        if owner[centre_cell[k]] < 0:
            owner[centre_cell[k]] = k
    return owner


def giou(a, b):
    ix0, iy0 = torch.max(a[:, 0], b[:, 0]), torch.max(a[:, 1], b[:, 1])
    ix1, iy1 = torch.min(a[:, 2], b[:, 2]), torch.min(a[:, 3], b[:, 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-6
    iou = inter / union
    cx0, cy0 = torch.min(a[:, 0], b[:, 0]), torch.min(a[:, 1], b[:, 1])
    cx1, cy1 = torch.max(a[:, 2], b[:, 2]), torch.max(a[:, 3], b[:, 3])
    hull = (cx1 - cx0) * (cy1 - cy0) + 1e-6
    return iou - (hull - union) / hull, iou


def detection_loss(cls_raw, box_raw, targets, centres, num_classes):
    b = cls_raw.shape[0]
    logits = cls_raw.flatten(2).transpose(1, 2)  # [B, N, C]
    ltrb = decode_ltrb(box_raw)
    cls_target = torch.zeros_like(logits)
    box_losses, npos = [], 0
    for i, (boxes, labels) in enumerate(targets):
        # The DataLoader hands numpy arrays over as tensors; validation batches stay numpy.
        boxes_t = torch.as_tensor(boxes)
        labels = torch.as_tensor(labels)
        owner = assign(centres, boxes_t)
        pos = owner >= 0
        if not pos.any():
            continue
        gt = boxes_t[owner[pos]]
        c = centres[pos]
        pred = torch.stack([c[:, 0] - ltrb[i, pos, 0], c[:, 1] - ltrb[i, pos, 1],
                            c[:, 0] + ltrb[i, pos, 2], c[:, 1] + ltrb[i, pos, 3]], 1)
        g, iou = giou(pred, gt)
        box_losses.append((1 - g).sum())
        # IoU-aware target: a cell's score learns how well its box fits, so NMS keeps the best box.
        cls_target[i, pos.nonzero().squeeze(1), labels[owner[pos]]] = iou.detach().clamp(min=0.1)
        npos += int(pos.sum())
    npos = max(npos, 1)
    # Varifocal-style: positives weighted by their target, negatives focal-down-weighted.
    p = torch.sigmoid(logits)
    weight = torch.where(cls_target > 0, cls_target, 0.75 * p.detach().pow(2))
    cls_loss = (F.binary_cross_entropy_with_logits(logits, cls_target, reduction="none") * weight).sum() / npos
    box_loss = torch.stack(box_losses).sum() / npos if box_losses else logits.sum() * 0
    return cls_loss + 2.0 * box_loss, cls_loss.item(), box_loss.item()


# ---------------------------------------------------------------------------- evaluation

def nms(boxes, scores, iou_threshold):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        if order.numel() == 1:
            break
        rest = order[1:]
        _, iou = giou(boxes[i].expand(rest.numel(), 4), boxes[rest])
        order = rest[iou <= iou_threshold]
    return keep


def predict(exported, x, score_threshold=0.05, iou_threshold=0.45):
    """Per image: (boxes xyxy, scores, labels), decoded as ml-inference does (class-wise NMS)."""
    with torch.no_grad():
        out = exported(normalise(x))
    results = []
    for row in out:
        cx, cy, w, h = row[0], row[1], row[2], row[3]
        scores, labels = row[4:].max(0)
        keep = scores > score_threshold
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)[keep]
        scores, labels = scores[keep], labels[keep]
        kept = []
        for c in labels.unique():
            idx = (labels == c).nonzero().squeeze(1)
            kept += [int(idx[k]) for k in nms(boxes[idx], scores[idx], iou_threshold)]
        kept = torch.tensor(sorted(kept), dtype=torch.long)
        results.append((boxes[kept], scores[kept], labels[kept]))
    return results


def average_precision(recall, precision):
    """VOC all-point interpolated AP."""
    mrec = np.concatenate([[0], recall, [1]])
    mpre = np.concatenate([[0], precision, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate(exported, val_batches, classes, iou_match=0.5):
    exported.eval()
    dets = {c: [] for c in range(len(classes))}
    gts = {c: 0 for c in range(len(classes))}
    for x, targets in val_batches:
        for img_i, (pred, (boxes, labels)) in enumerate(zip(predict(exported, x), targets)):
            for c in range(len(classes)):
                gt = torch.from_numpy(boxes[labels == c]) if len(boxes) else torch.zeros(0, 4)
                gts[c] += len(gt)
                sel = pred[2] == c
                pb, ps = pred[0][sel], pred[1][sel]
                used = np.zeros(len(gt), bool)
                for k in ps.argsort(descending=True).tolist():
                    hit = False
                    if len(gt):
                        _, iou = giou(pb[k].expand(len(gt), 4), gt)
                        j = int(iou.argmax())
                        if iou[j] >= iou_match and not used[j]:
                            used[j], hit = True, True
                    dets[c].append((float(ps[k]), hit))
    per_class = {}
    for c, name in enumerate(classes):
        d = sorted(dets[c], key=lambda t: -t[0])
        tp = np.cumsum([h for _, h in d]) if d else np.zeros(0)
        fp = np.cumsum([not h for _, h in d]) if d else np.zeros(0)
        recall = tp / max(gts[c], 1)
        precision = tp / np.maximum(tp + fp, 1)
        per_class[name] = {"ap50": round(average_precision(recall, precision), 4), "objects": gts[c]}
    m = float(np.mean([v["ap50"] for v in per_class.values()]))
    return {"map50": round(m, 4), "per_class": per_class}


def class_agnostic_recall(exported, val_batches, score_threshold=0.3):
    """Share of items found at IoU 0.5 whatever their label: how well the belt is covered."""
    found = total = false = 0
    for x, targets in val_batches:
        for pred, (boxes, _labels) in zip(predict(exported, x, score_threshold), targets):
            total += len(boxes)
            used = set()
            for k in range(len(pred[0])):
                if len(boxes):
                    _, iou = giou(pred[0][k].expand(len(boxes), 4), torch.from_numpy(boxes))
                    j = int(iou.argmax())
                    if iou[j] >= 0.5 and j not in used:
                        used.add(j)
                        continue
                false += 1
            found += len(used)
    return {"recall": round(found / max(total, 1), 4), "false_per_image": round(false / max(1, sum(len(t) for _, t in val_batches)), 3)}


# ---------------------------------------------------------------------------- main

def export_onnx(exported, path, classes, args, extra):
    exported.eval()
    tmp = path + ".tmp"
    dummy = torch.zeros(1, 3, args.height, args.width)
    torch.onnx.export(exported, dummy, tmp, input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, opset_version=13,
                      do_constant_folding=True)
    preprocess = {"width": args.width, "height": args.height, "resize": "contain", "pad": [64, 64, 64],
                  "channels": "RGB", "layout": "NCHW", "dtype": "float32", "mean": MEAN, "std": STD}
    save_with_metadata(tmp, path, {"task": "detect", "labels": classes, "preprocess": preprocess,
                                   "detection": {"layout": "yolov8", "normalized": False}, **extra})


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masks", choices=scenes.MASKS, default="colour", help="cut-outs: scenes.py --masks")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=int, default=scenes.SCENE_W)
    p.add_argument("--height", type=int, default=scenes.SCENE_H)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--budget-min", type=float, default=150, help="training time in minutes (the schedule fits it)")
    p.add_argument("--val-scenes", type=int, default=240)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--runs", default=os.path.join(here, "runs"))
    p.add_argument("--export-only", default="", metavar="CHECKPOINT")
    p.add_argument("--init", default="", metavar="CHECKPOINT", help="start from these weights (fine-tuning) instead of from scratch")
    p.add_argument("--init-onnx", default="", metavar="MODEL",
                   help="start from the weights of a detector this script exported (the shipped models/conveyor-detector.onnx): "
                        "fine-tuning without the training checkpoint")
    p.add_argument("--no-balanced", dest="balanced", action="store_false",
                   help="draw cut-outs uniformly instead of every class equally often")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_cut, classes = scenes.load_cutouts(args.data, "train", masks=args.masks)
    val_cut, _ = scenes.load_cutouts(args.data, "val", masks=args.masks)
    print(f"classes {classes}; cut-outs train {len(train_cut)}, validation {len(val_cut)}", flush=True)
    vrng = np.random.default_rng(12345)
    vpool = scenes.BeltPool(vrng, size=40)
    val_batches = [make_batch(vrng, val_cut, 24, vpool) for _ in range(args.val_scenes // 24)]

    model = ConveyorDetector(len(classes)).to(memory_format=torch.channels_last)
    exported = Exported(model, args.height, args.width)
    centres = grid_centres(args.height // STRIDE, args.width // STRIDE)
    os.makedirs(args.runs, exist_ok=True)
    ckpt = os.path.join(args.runs, "detector-last.pt")
    history, started = [], time.time()
    if args.init:
        model.load_state_dict(torch.load(args.init)["model"])
    if args.init_onnx:
        meta = from_onnx.load_convolutions(model, args.init_onnx)
        if json.loads(meta.get("labels", "[]")) != classes:
            raise SystemExit(f"{args.init_onnx} labels {meta.get('labels')}, these photos' classes are {classes}")
        # Batch-norm statistics from training scenes of a generator of their own.
        crng = np.random.default_rng(args.seed + 1)
        cpool = scenes.BeltPool(crng, size=12)
        from_onnx.unfold_batch_norms(model, (normalise(make_batch(crng, train_cut, args.batch, cpool)[0]) for _ in range(6)))
        start = evaluate(exported, val_batches[:4], classes)
        print(f"starting from {args.init_onnx}: validation (96 scenes) mAP@0.5 {start['map50']:.3f}", flush=True)
        history.append({"step": 0, "minutes": 0, "map50": start["map50"], "from": os.path.basename(args.init_onnx)})
        started = time.time()  # the budget is for training
    if args.export_only:
        model.load_state_dict(torch.load(args.export_only)["model"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
        loader = torch.utils.data.DataLoader(SceneStream(train_cut, args.batch, args.seed, args.balanced), batch_size=None,
                                             num_workers=1, prefetch_factor=4, persistent_workers=True)
        budget = args.budget_min * 60
        warmup = 50 if args.init or args.init_onnx else 300
        step, last_eval = 0, time.time()
        running = []
        for x, targets in loader:
            elapsed = time.time() - started
            if elapsed >= budget:
                break
            frac = elapsed / budget
            lr = args.lr * min(1.0, (step + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            cls_raw, box_raw = model.raw(normalise(x).contiguous(memory_format=torch.channels_last))
            loss, lc, lb = detection_loss(cls_raw, box_raw, targets, centres, len(classes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            running.append((lc, lb))
            step += 1
            if step % 50 == 0:
                c, b = np.mean(running, 0)
                running = []
                print(f"step {step} {elapsed / 60:.1f} min lr {lr:.5f} cls {c:.3f} box {b:.3f}", flush=True)
            if time.time() - last_eval > 20 * 60:
                last_eval = time.time()
                metrics = evaluate(exported, val_batches[:4], classes)
                history.append({"step": step, "minutes": round(elapsed / 60, 1), "map50": metrics["map50"]})
                print(f"  validation (96 scenes) mAP@0.5 {metrics['map50']:.3f}", flush=True)
                torch.save({"model": model.state_dict(), "step": step}, ckpt)
        torch.save({"model": model.state_dict(), "step": step}, ckpt)
        print(f"trained {step} steps of {args.batch} scenes in {(time.time() - started) / 60:.1f} min", flush=True)
    model.eval()
    metrics = evaluate(exported, val_batches, classes)
    metrics["class_agnostic"] = class_agnostic_recall(exported, val_batches)
    metrics["validation_scenes"] = len(val_batches) * 24
    metrics["training_minutes"] = round((time.time() - started) / 60, 1) if not args.export_only else None
    metrics["history"] = history
    print(json.dumps(metrics, indent=1), flush=True)
    trained = (f"fine-tuned from {os.path.basename(args.init_onnx)}, itself trained from scratch," if args.init_onnx else "from scratch")
    export_onnx(exported, args.out, classes, args, {"trained": f"{trained} on synthetic belt scenes (tools/train/scenes.py)",
                                                    "map50": metrics["map50"]})
    with open(os.path.splitext(args.out)[0] + ".metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
