#!/usr/bin/env python3
"""Synthetic conveyor scenes from real TrashNet photos: the detector's training data and the
counting flow's test belts.

Each TrashNet photo shows one object on a white board. We cut the object out (background fitted
from the photo's border, a threshold on the difference, a little morphology, holes filled), then
paste 0..6 cut-outs, scaled, rotated and overlapping a little, onto generated belt textures (grey,
green or black rubber, seams, dirt, lighting gradients, motion blur) and write boxes and labels.
Scenes for training use only training photos, scenes for validation only validation photos (the
committed split in split/).

Belt sequences: items enter on the left and leave on the right over successive frames, with the
true number of items per class, for the tracker and counting tests.

Usage (Debian's Python: numpy and PIL, no torch needed):
  /usr/bin/python3 tools/train/scenes.py preview  --data ../shared/datasets/trashnet --out /tmp/scenes
  /usr/bin/python3 tools/train/scenes.py sequences --data ../shared/datasets/trashnet --split val \
      --count 4 --out /tmp/belts
"""
import argparse
import hashlib
import json
import math
import os
import pickle
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SCENE_W, SCENE_H = 320, 240
# Cut-outs are stored with their longer side at most this many pixels: about the largest an item
# is drawn in a scene, so no detail is lost and the cache stays small.
CUTOUT_MAX_SIDE = 176


# ---------------------------------------------------------------------------- cut-outs

def read_split(split_dir, name):
    with open(os.path.join(split_dir, f"{name}.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


MASKS = ("colour", "edges")


def object_mask(rgb, masks="colour"):
    """Mask of the object in a TrashNet photo (H x W x 3 uint8): True on the object.

    The board is bright and smooth but lit unevenly, so a quadratic surface per channel is fitted to
    the border pixels (refitted without the outliers an object touching the border makes). Two cues
    find the object on it:
    - colour: what differs from the board in colour, or is much darker or brighter. A shadow darkens
      the board and tints it a little, so darkened pixels need a stronger tint to count;
    - edges: sharp steps in the board-normalised image, closed into outlines. Clear glass and plastic,
      white paper and the inside of a shiny lid differ from the board mostly there, and a soft
      shadow's edge is spread over too many pixels to pass.
    Their union, a little morphology, holes filled, and the most solid connected part kept.
    masks="colour" is the first recipe, the colour cue alone (any tint counts), which cuts clear and
    white objects to pieces; the shipped detector learnt from it, so it stays the default until the
    detector is retrained on "edges" cut-outs (it splits some whole objects it has not seen).
    """
    h, w, _ = rgb.shape
    img = rgb.astype(np.float32) + 1.0
    board, border = fit_board(img)
    lum, board_lum = img.mean(-1), board.mean(-1)
    ratio = lum / board_lum
    chroma = np.abs(img / lum[..., None] - board / board_lum[..., None]).max(-1)
    if masks == "colour":
        mask = (chroma > 0.1) | (ratio < 0.55) | (ratio > 1.12)
    else:
        colour = ((chroma > 0.1) & (ratio > 0.85)) | (chroma > 0.2) | (ratio < 0.55) | (ratio > 1.12)
        normalised = Image.fromarray(np.clip(img / board * 128, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
        normalised = np.asarray(normalised).astype(np.float32) / 128
        steps = np.max([gradient_magnitude(normalised[..., c]) for c in range(3)], 0)
        # The board's own grain sets the bar (its median step at the border), never below a 4.5 % step.
        edges = steps > max(0.045, 6 * float(np.median(steps[border])))
        edges = erode(dilate(edges, 11), 11)  # close outlines broken by highlights
        mask = colour | edges
    mask = erode(dilate(mask, 5), 5)  # close small gaps
    mask = dilate(erode(mask, 5), 5)  # open: drop specks
    return main_component(fill_holes(mask))


def fit_board(img):
    """The board under the object: a quadratic surface per channel fitted to the photo's border.
    Returns (board H x W x 3, border mask)."""
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    border = np.zeros((h, w), bool)
    m = max(4, min(h, w) // 24)
    border[:m], border[-m:], border[:, :m], border[:, -m:] = True, True, True, True
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], -1)
    a = basis[border]
    board = np.empty_like(img)
    keep = np.ones(a.shape[0], bool)
    for _ in range(3):
        resid_max = np.zeros(a.shape[0], np.float32)
        for c in range(3):
            coef, *_ = np.linalg.lstsq(a[keep], img[..., c][border][keep], rcond=None)
            board[..., c] = basis @ coef
            resid_max = np.maximum(resid_max, np.abs(img[..., c][border] - board[..., c][border]))
        keep = resid_max < max(12.0, 3 * np.median(resid_max[keep]))
    return board, border


def gradient_magnitude(x):
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    gx[:, 1:-1] = (x[:, 2:] - x[:, :-2]) / 2
    gy[1:-1] = (x[2:] - x[:-2]) / 2
    return np.hypot(gx, gy)


def dilate(mask, size):
    return np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(size))) > 127


def erode(mask, size):
    return np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(size))) > 127


def fill_holes(mask):
    """Whatever the border cannot reach through the background is the object."""
    h, w = mask.shape
    padded = Image.new("L", (w + 2, h + 2), 0)
    padded.paste(Image.fromarray((mask * 255).astype(np.uint8)), (1, 1))
    ImageDraw.floodfill(padded, (0, 0), 128)
    return np.asarray(padded)[1:-1, 1:-1] != 128


def main_component(mask):
    """The most solid connected part of a mask: grown back from the point that survives erosion longest."""
    # copy(): an image made from an array shares its buffer read-only, and floodfill would not write.
    pil = Image.fromarray((mask * 255).astype(np.uint8)).copy()
    core = pil
    while True:
        eroded = core.filter(ImageFilter.MinFilter(7))
        # Erosion repeats the frame's edge, so a mask filling the whole frame never shrinks.
        if not eroded.getbbox() or eroded.tobytes() == core.tobytes():
            break
        core = eroded
    arr = np.asarray(core)
    ys, xs = np.nonzero(arr)
    if len(xs) == 0:
        return mask
    ImageDraw.floodfill(pil, (int(xs[len(xs) // 2]), int(ys[len(ys) // 2])), 128)
    return np.asarray(pil) == 128


def usable(mask):
    """A cut-out is kept when it is one compact object that does not run off the photo."""
    frac = mask.mean()
    if frac < 0.03 or frac > 0.8:
        return False
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return edge.mean() < 0.25


def photo_mask(path, masks="colour"):
    """(the photo as a PIL RGB image, its object mask found at 256 pixels on the longer side, the scale
    from the photo to the mask)."""
    im = Image.open(path).convert("RGB")
    scale = 256 / max(im.size)
    small = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    return im, object_mask(np.asarray(small), masks), scale


def cutout(path, masks="colour"):
    """RGBA cut-out (uint8) of the object in one photo, cropped to its mask, or None if unusable."""
    im, mask, scale = photo_mask(path, masks)
    if not usable(mask):
        return None
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    alpha = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    full_alpha = alpha.resize(im.size, Image.BILINEAR)
    box = (int(x0 / scale), int(y0 / scale), int(math.ceil(x1 / scale)), int(math.ceil(y1 / scale)))
    rgba = im.copy()
    rgba.putalpha(full_alpha)
    rgba = rgba.crop(box)
    s = CUTOUT_MAX_SIDE / max(rgba.size)
    if s < 1:
        rgba = rgba.resize((max(1, round(rgba.width * s)), max(1, round(rgba.height * s))), Image.LANCZOS)
    return np.asarray(rgba)


def load_cutouts(data, split, split_dir=os.path.join(HERE, "split"), cache_dir=os.path.join(HERE, "cache"), limit=0,
                 masks="colour"):
    """[(rgba uint8 array, class index)] for one split, and the class names; cached on disk.

    limit: cut only about this many photos, every k-th of the split (which lists photos class by
    class, so each class keeps its share); cutting takes ~0.2 s a photo.
    """
    classes = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)) and not d.startswith("."))
    paths = read_split(split_dir, split)
    if limit and limit < len(paths):
        paths = paths[::math.ceil(len(paths) / limit)]
    key = hashlib.sha1(("\n".join(paths) + f"|{CUTOUT_MAX_SIDE}|" + ("v1" if masks == "colour" else "v2-edges")).encode()).hexdigest()[:10]
    cache = os.path.join(cache_dir, f"cutouts-{split}-{len(paths)}-{key}.pkl")
    if os.path.exists(cache):
        with open(cache, "rb") as f:
            return pickle.load(f), classes
    out, skipped = [], 0
    for rel in paths:
        c = rel.split("/")[0]
        rgba = cutout(os.path.join(data, rel), masks)
        if rgba is None:
            skipped += 1
            continue
        out.append((rgba, classes.index(c)))
    print(f"cut {len(out)} objects from {len(paths)} {split} photos ({skipped} unusable)", file=sys.stderr, flush=True)
    os.makedirs(cache_dir, exist_ok=True)
    with open(cache + ".tmp", "wb") as f:
        pickle.dump(out, f, protocol=4)
    os.replace(cache + ".tmp", cache)
    return out, classes


# ---------------------------------------------------------------------------- belts

BELT_COLOURS = [(70, 72, 74), (40, 42, 44), (22, 22, 24), (52, 78, 58), (96, 98, 96), (60, 58, 52)]


def belt_texture(rng, w, h):
    """A belt surface (h x w x 3 float32, 0..255): rubber colour, grain, ribs, seams, dirt, light."""
    base = np.array(BELT_COLOURS[rng.integers(len(BELT_COLOURS))], np.float32) + rng.normal(0, 8, 3)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    # Grain at two scales.
    img += rng.normal(0, rng.uniform(2, 7), (h, w, 1))
    coarse = rng.normal(0, rng.uniform(2, 8), (h // 8 + 2, w // 8 + 2, 1)).astype(np.float32)
    img += np.asarray(Image.fromarray(coarse[..., 0]).resize((w, h), Image.BILINEAR))[..., None]
    xs = np.arange(w, dtype=np.float32)
    # Ribs across the direction of travel, and a seam or two.
    if rng.random() < 0.5:
        period = rng.uniform(6, 18)
        img += (rng.uniform(3, 10) * np.sin(2 * np.pi * xs / period + rng.uniform(0, 6.3)))[None, :, None]
    for _ in range(rng.integers(0, 3)):
        x = rng.integers(0, w)
        img[:, max(0, x - 1):x + 2] *= rng.uniform(0.5, 1.4)
    # Belt edges / side rails.
    if rng.random() < 0.5:
        rail = rng.integers(4, 20)
        shade = rng.uniform(0.3, 1.6)
        img[:rail] *= shade
        img[h - rail:] *= shade
    # Dirt and stains.
    for _ in range(rng.integers(0, 12)):
        r = rng.uniform(2, 18)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        yy, xx = np.ogrid[0:h, 0:w]
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        img += (blob * rng.uniform(-30, 30))[..., None] * rng.uniform(0.6, 1.2, 3)
    return img


class BeltPool:
    """Belt textures are slow to make (~20 ms); scenes crop and mirror a pool of wide ones instead."""

    def __init__(self, rng, size=120, w=SCENE_W, h=SCENE_H):
        self.w, self.h = w, h
        self.belts = [belt_texture(rng, w * 2, h) for _ in range(size)]
        self.lights = [lighting(rng, w, h) for _ in range(size // 2)]

    def belt(self, rng):
        b = self.belts[rng.integers(len(self.belts))]
        x = int(rng.integers(0, b.shape[1] - self.w + 1))
        out = b[:, x:x + self.w]
        if rng.random() < 0.5:
            out = out[::-1]
        return out.copy()

    def light(self, rng):
        return self.lights[rng.integers(len(self.lights))]


def lighting(rng, w, h):
    """A multiplicative lighting field: gradient plus a soft hot spot."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 1 + rng.uniform(-0.35, 0.35) * (xx / w - 0.5) + rng.uniform(-0.35, 0.35) * (yy / h - 0.5)
    if rng.random() < 0.5:
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.3, 0.9) * w
        g += rng.uniform(0.1, 0.4) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return (g * rng.uniform(0.7, 1.25))[..., None]


def prepare_item(rng, rgba, long_side, angle, flip):
    """Scale, flip and rotate a cut-out; returns (RGBA PIL image, alpha bbox inside it)."""
    im = Image.fromarray(rgba)
    s = long_side / max(im.size)
    im = im.resize((max(2, round(im.width * s)), max(2, round(im.height * s))), Image.BILINEAR)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if angle:
        im = im.rotate(angle, resample=Image.BILINEAR, expand=True)
    bbox = im.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    return im, bbox


def colour_jitter(rng, im):
    arr = np.asarray(im).astype(np.float32)
    rgb = arr[..., :3] * rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, 3) + rng.uniform(-12, 12)
    arr[..., :3] = np.clip(rgb, 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGBA")


def paste(canvas, item, x, y, shadow):
    """Alpha-composite an RGBA item at (x, y) onto a float canvas, with a soft shadow under it."""
    h, w, _ = canvas.shape
    iw, ih = item.size
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + iw), min(h, y + ih)
    if x1 <= x0 or y1 <= y0:
        return
    arr = np.asarray(item).astype(np.float32)[y0 - y:y1 - y, x0 - x:x1 - x]
    a = arr[..., 3:4] / 255.0
    if shadow > 0:
        sh = np.asarray(item.getchannel("A").filter(ImageFilter.GaussianBlur(4))).astype(np.float32) / 255.0
        sx, sy = 3, 4
        sx0, sy0, sx1, sy1 = max(0, x + sx), max(0, y + sy), min(w, x + sx + iw), min(h, y + sy + ih)
        if sx1 > sx0 and sy1 > sy0:
            s = sh[sy0 - y - sy:sy1 - y - sy, sx0 - x - sx:sx1 - x - sx, None]
            canvas[sy0:sy1, sx0:sx1] *= 1 - shadow * s
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + arr[..., :3] * a


def finish(rng, canvas, light, blur_px):
    img = canvas * light
    # Sensor noise, drawn at a quarter of the pixels and tiled (full-frame normal draws cost ~3 ms).
    h, w, _ = img.shape
    noise = rng.normal(0, rng.uniform(1, 5), ((h + 1) // 2, (w + 1) // 2, 3)).astype(np.float32)
    img += np.tile(noise, (2, 2, 1))[:h, :w]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if blur_px >= 2:
        # Motion blur along the belt: average of shifted copies.
        arr = np.asarray(out).astype(np.float32)
        acc = np.zeros_like(arr)
        for k in range(blur_px):
            acc += np.roll(arr, k - blur_px // 2, axis=1)
        out = Image.fromarray((acc / blur_px).astype(np.uint8))
    elif rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return out


def overlap_ok(box, boxes, max_cover=0.3):
    """A new item may cover at most max_cover of an earlier one, and vice versa."""
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        if inter > max_cover * (b[2] - b[0]) * (b[3] - b[1]) or inter > max_cover * (box[2] - box[0]) * (box[3] - box[1]):
            return False
    return True


def by_class(cutouts):
    """{class index: [cut-out]}: drawing a class first, then one of its cut-outs, shows every class
    equally often however few photos it has (trash has 92 usable training cut-outs, paper 268)."""
    groups = {}
    for rgba, cls in cutouts:
        groups.setdefault(cls, []).append((rgba, cls))
    return [groups[c] for c in sorted(groups)]


def random_scene(rng, cutouts, w=SCENE_W, h=SCENE_H, max_items=6, pool=None, classes=None):
    """One still scene: (PIL RGB image, boxes [[x0, y0, x1, y1]] in pixels, class indices).

    classes: by_class(cutouts) to draw every class equally often; None draws cut-outs uniformly.
    """
    canvas = pool.belt(rng) if pool else belt_texture(rng, w, h)
    n = int(rng.choice(np.arange(max_items + 1), p=scene_count_weights(max_items)))
    boxes, labels = [], []
    for _ in range(n):
        group = classes[rng.integers(len(classes))] if classes else cutouts
        rgba, cls = group[rng.integers(len(group))]
        item, bb = prepare_item(rng, rgba, rng.uniform(0.17, 0.5) * h * rng.uniform(1.0, 1.45),
                                rng.uniform(-180, 180) if rng.random() < 0.8 else 0, rng.random() < 0.5)
        if bb is None:
            continue
        item = colour_jitter(rng, item)
        for _attempt in range(8):
            # Items may hang over the frame's edge a little, as they do entering and leaving.
            x = int(rng.uniform(-0.25 * (bb[2] - bb[0]), w - 0.75 * (bb[2] - bb[0]))) - bb[0]
            y = int(rng.uniform(-0.1 * (bb[3] - bb[1]), h - 0.9 * (bb[3] - bb[1]))) - bb[1]
            box = clip_box([x + bb[0], y + bb[1], x + bb[2], y + bb[3]], w, h)
            if box and overlap_ok(box, boxes):
                paste(canvas, item, x, y, rng.uniform(0.2, 0.5))
                boxes.append(box)
                labels.append(cls)
                break
    blur = int(rng.integers(2, 7)) if rng.random() < 0.25 else 0
    return finish(rng, canvas, pool.light(rng) if pool else lighting(rng, w, h), blur), boxes, labels


def scene_count_weights(max_items):
    w = np.array([0.5] + [1.0] * max_items)
    return w / w.sum()


def clip_box(box, w, h, min_visible=0.4):
    """The visible part of a box, or None when too little of it is inside the frame."""
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 - cx0 < 8 or cy1 - cy0 < 8:
        return None
    if (cx1 - cx0) * (cy1 - cy0) < min_visible * (x1 - x0) * (y1 - y0):
        return None
    return [float(cx0), float(cy0), float(cx1), float(cy1)]


# ---------------------------------------------------------------------------- belt sequences

def belt_sequence(rng, cutouts, n_items, w=SCENE_W, h=SCENE_H, speed=None):
    """Items riding a belt left to right across successive frames.

    Returns (frames [PIL], truth) where truth has per-frame boxes with item ids and the number of
    items per class that crossed. Items are spaced so at most a few are in view at once and each is
    seen in several frames; a few ride side by side in different lanes.
    """
    speed = speed or float(rng.uniform(0.12, 0.2) * w)  # pixels per frame: 5-8 frames in view
    belt = belt_texture(rng, w * 3, h)  # scrolls with the items
    light = lighting(rng, w, h)
    groups = by_class(cutouts)
    items, x_cursor = [], 0.0
    for i in range(n_items):
        # Every class equally often, so per-class counts are measured on similar numbers of items.
        group = groups[rng.integers(len(groups))]
        rgba, cls = group[rng.integers(len(group))]
        item, bb = prepare_item(rng, rgba, rng.uniform(0.3, 0.55) * h, rng.uniform(-180, 180), rng.random() < 0.5)
        if bb is None:
            continue
        item = colour_jitter(rng, item)
        bw, bh = bb[2] - bb[0], bb[3] - bb[1]
        side_by_side = items and rng.random() < 0.2
        if side_by_side:
            prev = items[-1]
            x_start = prev["x"]
            lane_y = (h * 0.72 - bh / 2) if prev["y"] + prev["bb"][1] < h / 3 else (h * 0.05)
        else:
            x_cursor -= bw + rng.uniform(0.02, 0.6) * w
            x_start = x_cursor
            lane_y = rng.uniform(0.05 * h, h - bh - 0.05 * h)
        items.append({"id": i, "cls": cls, "item": item, "bb": bb, "x": x_start - bb[0], "y": int(lane_y) - bb[1]})
    last = min(it["x"] for it in items) if items else 0
    n_frames = int(math.ceil((w - last) / speed)) + 1
    frames, truth_frames = [], []
    for f in range(n_frames):
        shift = int(f * speed) % (w * 2)
        canvas = belt[:, w * 2 - shift:w * 3 - shift].copy() if shift else belt[:, w * 2:].copy()
        boxes = []
        for it in items:
            x = int(round(it["x"] + f * speed))
            y = it["y"]
            bb = it["bb"]
            box = clip_box([x + bb[0], y + bb[1], x + bb[2], y + bb[3]], w, h, min_visible=0.0)
            if box is None:
                continue
            paste(canvas, it["item"], x, y, 0.35)
            boxes.append({"item": it["id"], "label": int(it["cls"]), "box": [round(v, 1) for v in box]})
        frames.append(finish(rng, canvas, light, 0))
        truth_frames.append(boxes)
    counts = {}
    for it in items:
        counts[int(it["cls"])] = counts.get(int(it["cls"]), 0) + 1
    return frames, {"frames": truth_frames, "counts": counts, "items": len(items), "speed": speed}


# ---------------------------------------------------------------------------- CLI

def write_flattened(data, split, out, masks):
    """A measure of the masks: each photo with a usable cut-out written again with everything outside
    its mask replaced by the board's mean colour, and the list of them (`usable.txt`). The waste
    classifier's accuracy on these (tools/evaluate.js --data OUT --split OUT/usable.txt) falls where a
    mask drops part of the object; a mask that keeps board or shadow gives the classifier more of the
    photo than a belt will, so read it beside a `masks` sheet."""
    kept = []
    for rel in read_split(os.path.join(HERE, "split"), split):
        im, mask, _ = photo_mask(os.path.join(data, rel), masks)
        if not usable(mask):
            continue
        alpha = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(im.size, Image.BILINEAR))[..., None] / 255.0
        photo = np.asarray(im).astype(np.float32)
        board = np.concatenate([photo[:8].reshape(-1, 3), photo[-8:].reshape(-1, 3)]).mean(0)
        os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray((photo * alpha + board * (1 - alpha)).astype(np.uint8)).save(os.path.join(out, rel), quality=95)
        kept.append(rel)
    with open(os.path.join(out, "usable.txt"), "w") as f:
        f.write("\n".join(kept) + "\n")
    print(f"{len(kept)} photos of {split} with a usable cut-out, flattened in {out}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["preview", "sequences", "masks", "flattened"])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=8, help="scenes (preview) or sequences")
    p.add_argument("--items", type=int, default=12, help="items per belt sequence")
    p.add_argument("--speed", type=float, default=0, help="belt speed as a fraction of the frame width per frame (0: random, 0.12-0.2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--photos", type=int, default=0, help="cut only about this many photos of the split (0: all)")
    p.add_argument("--cache-dir", default=os.path.join(HERE, "cache"))
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--masks", choices=MASKS, default="colour",
                   help="how objects are cut from their board: the colour cue alone (what the shipped detector learnt from) or with edges")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    if args.command == "masks":
        paths = read_split(os.path.join(HERE, "split"), args.split)
        sheet = Image.new("RGB", (8 * 96, ((min(args.count, len(paths)) + 7) // 8) * 128), (255, 0, 255))
        for i, rel in enumerate(paths[:: max(1, len(paths) // args.count)][:args.count]):
            c = cutout(os.path.join(args.data, rel), args.masks)
            if c is None:
                continue
            im = Image.fromarray(c)
            im.thumbnail((96, 128))
            sheet.paste(im, ((i % 8) * 96, (i // 8) * 128), im)
        sheet.save(os.path.join(args.out, "masks.png"))
        return
    if args.command == "flattened":
        write_flattened(args.data, args.split, args.out, args.masks)
        return
    cutouts, classes = load_cutouts(args.data, args.split, cache_dir=args.cache_dir, limit=args.photos, masks=args.masks)
    if args.command == "preview":
        for i in range(args.count):
            im, boxes, labels = random_scene(rng, cutouts)
            d = ImageDraw.Draw(im)
            for b, l in zip(boxes, labels):
                d.rectangle(b, outline=(255, 0, 0))
                d.text((b[0] + 2, b[1] + 2), classes[l], fill=(255, 255, 0))
            im.save(os.path.join(args.out, f"scene{i}.jpg"), quality=args.quality)
        return
    index = []
    for s in range(args.count):
        frames, truth = belt_sequence(rng, cutouts, args.items, speed=args.speed * SCENE_W if args.speed else None)
        folder = os.path.join(args.out, f"belt{s}")
        os.makedirs(folder, exist_ok=True)
        for f, im in enumerate(frames):
            im.save(os.path.join(folder, f"frame{f:04d}.jpg"), quality=args.quality)
        truth["labels"] = classes
        truth["counts"] = {classes[k]: v for k, v in sorted(truth["counts"].items())}
        with open(os.path.join(folder, "truth.json"), "w") as fh:
            json.dump(truth, fh)
        index.append({"folder": f"belt{s}", "frames": len(frames), "items": truth["items"], "counts": truth["counts"]})
    with open(os.path.join(args.out, "index.json"), "w") as fh:
        json.dump({"split": args.split, "seed": args.seed, "sequences": index}, fh, indent=1)


if __name__ == "__main__":
    main()
