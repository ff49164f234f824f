// The tracker of ml-track without Node-RED: items moving along a belt, frame by frame, on synthetic
// detections (boxes in frame pixels, as ml-inference gives them).
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { Tracker, PeriodCounts, DEFAULT_TRACKER, assign } = require('../nodes/ml-track/tracker');

const WIDTH = 640;
const HEIGHT = 480;
const T0 = Date.parse('2026-11-27T10:00:00.000Z');

/** One frame a second; `items` are [label, score, x, y] (80 x 60 boxes) detected in it. */
function frame(seq, items, camera = 'belt1') {
  const at = T0 + seq * 1000;
  return {
    camera, seq, at, capturedAt: new Date(at).toISOString(), width: WIDTH, height: HEIGHT,
    detections: items.map(([label, score, x, y, w = 80, h = 60]) => ({ label, score, index: 0, box: { x, y, w, h } })),
  };
}

/** Runs frames through a tracker; returns the counted items and each frame's update. */
function run(tracker, frames) {
  const updates = frames.map((f) => tracker.update(f));
  return { counted: updates.flatMap((u) => u.counted), updates };
}

const tracker = (options = {}) => new Tracker({ ...DEFAULT_TRACKER, ...options });

// An item moving 60 px a frame (75 % of its 80 px width) left to right, its centre crossing the
// line at x = 320 between frames 4 (centre 300) and 5 (centre 360).
const along = (label, score, y, seqs) => seqs.map((seq) => [seq, [label, score, 20 + 60 * seq, y]]);
const framesOf = (...paths) => {
  const bySeq = new Map();
  for (const [seq, item] of paths.flat()) bySeq.set(seq, [...(bySeq.get(seq) ?? []), item]);
  return [...bySeq.keys()].sort((a, b) => a - b).map((seq) => frame(seq, bySeq.get(seq)));
};

test('an item crossing the line left to right is counted once, in the frame it crossed, with its id and box', () => {
  const { counted, updates } = run(tracker(), framesOf(along('plastic', 0.9, 200, [1, 2, 3, 4, 5, 6, 7, 8, 9])));
  assert.equal(counted.length, 1);
  const [item] = counted;
  assert.deepEqual(item, {
    id: `belt1-${T0 + 5000}-5-t1`, camera: 'belt1', track: 1, label: 'plastic', score: 0.9,
    box: { x: 320, y: 200, w: 80, h: 60 }, frameSeq: 5, capturedAt: new Date(T0 + 5000).toISOString(),
  });
  assert.ok(updates.every((u) => u.trackOf[0] === 1), 'one track from the first frame to the last');
  assert.equal(updates[4].counted.length, 1, 'counted in frame 5');
  assert.equal(updates[8].tracks[0].counted, true);
});

test('the same item seen in 8 frames, jittering back over the line, is counted once', () => {
  const xs = [180, 210, 240, 260, 290, 250, 300, 340]; // box x: centre 330 > 320 at frame 5, back, over again
  const frames = xs.map((x, i) => frame(i + 1, [['glass', 0.8, x, 100]]));
  const { counted, updates } = run(tracker(), frames);
  assert.equal(counted.length, 1);
  assert.equal(counted[0].frameSeq, 5);
  assert.deepEqual(new Set(updates.map((u) => u.trackOf[0])), new Set([1]));
  // In exit mode the same item counts once too, when it is gone.
  const exit = tracker({ mode: 'exit' });
  const seen = run(exit, [...frames, frame(9, []), frame(10, []), frame(11, []), frame(12, [])]);
  assert.equal(seen.counted.length, 1);
  assert.equal(seen.counted[0].frameSeq, 8, 'the frame it was last seen in');
  assert.equal(seen.updates[10].counted.length, 1, 'counted once 3 frames went by without it (2 missed frames allowed)');
});

test('a missed frame at the line keeps the track and the count', () => {
  const path = along('metal', 0.7, 300, [1, 2, 3, 4, 5, 6, 7]).filter(([seq]) => seq !== 4 && seq !== 5);
  const frames = [1, 2, 3, 4, 5, 6, 7].map((seq) => frame(seq, path.filter(([s]) => s === seq).map(([, item]) => item)));
  const { counted, updates } = run(tracker(), frames);
  assert.equal(counted.length, 1, 'two frames missed (frames 4 and 5) around the line');
  assert.equal(counted[0].frameSeq, 6);
  assert.equal(counted[0].track, 1);
  assert.deepEqual(updates.map((u) => u.tracks.length), [1, 1, 1, 1, 1, 1, 1]);
  assert.equal(updates[4].tracks[0].missed, 2);
  // Three missed frames is one too many: the track is gone and the item comes back as a new one.
  const gap = [1, 2, 3, 7, 8].map((seq) => frame(seq, [['metal', 0.7, 20 + 60 * seq, 300]]));
  const again = run(tracker(), [...gap.slice(0, 3), frame(4, []), frame(5, []), frame(6, []), ...gap.slice(3)]);
  assert.equal(again.counted.length, 0, 'the new track started past the line');
  assert.equal(again.updates.at(-1).trackOf[0], 2);
});

test('two items side by side across the belt keep their own tracks, labels and counts', () => {
  const frames = framesOf(along('glass', 0.9, 80, [1, 2, 3, 4, 5, 6, 7]), along('paper', 0.8, 150, [1, 2, 3, 4, 5, 6, 7]));
  const { counted, updates } = run(tracker(), frames);
  assert.deepEqual(counted.map((c) => [c.track, c.label, c.box.y]), [[1, 'glass', 80], [2, 'paper', 150]]);
  assert.ok(updates.every((u) => u.trackOf[0] === 1 && u.trackOf[1] === 2));
});

test('two items one behind the other, moving most of their width a frame, are not swapped', () => {
  // 100 px apart, 70 px a frame: without the prediction the leader's old box is nearest the follower.
  const at = (lead, seq) => [lead ? 'plastic' : 'cardboard', 0.9, 40 + 100 * lead + 70 * seq, 200];
  const frames = [1, 2, 3, 4, 5, 6, 7].map((seq) => frame(seq, [at(0, seq), at(1, seq)]));
  const { counted, updates } = run(tracker(), frames);
  const ids = updates.map((u) => u.trackOf.join(','));
  assert.deepEqual(new Set(ids), new Set(['1,2']));
  assert.deepEqual(counted.map((c) => c.label).sort(), ['cardboard', 'plastic']);
});

test('a single-frame false positive is never counted, and an item counts only in the set direction', () => {
  const exit = run(tracker({ mode: 'exit' }), [frame(1, [['trash', 0.4, 300, 100]]), frame(2, []), frame(3, []), frame(4, []), frame(5, [])]);
  assert.equal(exit.counted.length, 0);
  const leftToRight = framesOf(along('glass', 0.9, 200, [1, 2, 3, 4, 5, 6, 7]));
  assert.equal(run(tracker({ direction: 'right-to-left' }), leftToRight).counted.length, 0);
  const rightToLeft = leftToRight.slice().reverse().map((f, i) => ({ ...f, seq: i + 1, at: T0 + (i + 1) * 1000 }));
  assert.equal(run(tracker({ direction: 'right-to-left' }), rightToLeft).counted.length, 1);
  const down = [1, 2, 3, 4, 5, 6].map((seq) => frame(seq, [['metal', 0.9, 300, 60 * seq]]));
  assert.equal(run(tracker({ direction: 'top-to-bottom' }), down).counted.length, 1);
  assert.equal(run(tracker({ direction: 'top-to-bottom', line: 0.95 }), down).counted.length, 0, 'the line is lower than it goes');
  assert.equal(run(tracker({ direction: 'bottom-to-top' }), down).counted.length, 0);
});

test('with minHits 3, an item that crossed on its second detection is counted on its third', () => {
  const frames = [4, 5, 6, 7].map((seq) => frame(seq, [['glass', 0.9, 20 + 60 * seq, 200]]));
  const { updates } = run(tracker({ minHits: 3 }), frames);
  assert.deepEqual(updates.map((u) => u.counted.length), [0, 0, 1, 0]);
  assert.equal(updates[2].counted[0].frameSeq, 6);
});

test('the label is the score-weighted vote over the track, its score the mean of the winner', () => {
  const labels = [['plastic', 0.6], ['glass', 0.95], ['plastic', 0.7], ['plastic', 0.8], ['glass', 0.5], ['plastic', 0.9]];
  const frames = labels.map(([label, score], i) => frame(i + 1, [[label, score, 20 + 60 * (i + 1), 200]]));
  const { counted, updates } = run(tracker({ mode: 'exit' }), [...frames, frame(7, []), frame(8, []), frame(9, [])]);
  assert.equal(counted[0].label, 'plastic'); // plastic 3.0 against glass 1.45
  assert.ok(Math.abs(counted[0].score - 0.75) < 1e-9);
  assert.equal(updates[1].tracks[0].label, 'glass', 'after two frames glass 0.95 leads plastic 0.6');
});

test('cameras are tracked apart; frames older than the camera\'s last are not tracked', () => {
  const t = tracker();
  const a = t.update(frame(1, [['glass', 0.9, 100, 100]], 'a'));
  const b = t.update(frame(1, [['glass', 0.9, 100, 100]], 'b'));
  assert.equal(a.trackOf[0], 1);
  assert.equal(b.trackOf[0], 1, 'track ids count per camera');
  t.update(frame(3, [['glass', 0.9, 160, 100]], 'a'));
  const late = t.update(frame(2, [['glass', 0.9, 130, 100]], 'a'));
  assert.equal(late.stale, true);
  assert.deepEqual(late.trackOf, [undefined]);
  assert.throws(() => t.update({ ...frame(4, []), width: undefined }), /the counting line is a fraction of the frame's width, so the frame's size is needed, but it is undefined/);
});

test('a clock set back mid-belt (NTP correcting a clock that ran fast) goes on tracking and counts the item once', () => {
  const t = tracker();
  const HOUR = 3600_000;
  // Frames 1-3 on a clock an hour fast, 4-9 on the corrected one: later frames, earlier times.
  const frames = framesOf(along('metal', 0.9, 200, [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    .map((f) => (f.seq <= 3 ? { ...f, at: f.at + HOUR, capturedAt: new Date(f.at + HOUR).toISOString() } : f));
  const { counted, updates } = run(t, frames);
  assert.ok(updates.every((u) => !u.stale), 'no frame is dropped as late');
  assert.ok(updates.every((u) => u.trackOf[0] === 1), 'one track across the clock change');
  assert.equal(counted.length, 1);
  assert.equal(counted[0].frameSeq, 5);
  // A frame that really came late (an earlier seq) is still not tracked.
  assert.equal(t.update({ ...frame(8, [['metal', 0.9, 500, 200]]) }).stale, true);
  // Nor is one with a later seq but only a little earlier (a restarted camera's seq 1 overtaken by an old frame).
  const restarted = tracker();
  restarted.update(frame(1, [['glass', 0.9, 100, 100]]));
  restarted.update(frame(2, [['glass', 0.9, 160, 100]]));
  assert.equal(restarted.update({ ...frame(40, [['glass', 0.9, 130, 100]]), at: T0 + 1700 }).stale, true);
});

test('memory is bounded: tracks per camera and cameras', () => {
  const t = tracker({ maxTracks: 5, maxCameras: 3 });
  const crowd = Array.from({ length: 8 }, (_, i) => ['trash', 0.5, 10 + 75 * i, 10]);
  const first = t.update(frame(1, crowd));
  assert.equal(first.tracks.length, 5);
  assert.equal(first.trackOf.filter((id) => id !== undefined).length, 5, 'the rest wait for room');
  for (const camera of ['c1', 'c2', 'c3', 'c4']) t.update(frame(2, [], camera));
  assert.equal(t.cameraCount, 3);
  t.forgetIdle(T0 + 10_000);
  assert.equal(t.cameraCount, 0);
});

test('the assignment is optimal where the greedy choice is wrong', () => {
  // Greedy takes row 0 -> column 0 (cost 1) and leaves row 1 with only a forbidden pairing.
  assert.deepEqual(assign([[1, 2], [1.5, 1e9]]), [1, 0]);
  assert.deepEqual(assign([[1e9, 1e9]]), [-1]);
  assert.deepEqual(assign([[0.2], [0.1], [0.3]]), [-1, 0, -1]);
  assert.deepEqual(assign([]), []);
});

test('period counts: one report per camera seen in the period, zeros included, then a new period', () => {
  const counts = new PeriodCounts(T0);
  counts.add('belt1', 'glass');
  counts.add('belt1', 'glass');
  counts.add('belt1', 'paper');
  counts.seen('belt2');
  assert.deepEqual(counts.close(T0 + 60_000), [
    { camera: 'belt1', from: '2026-11-27T10:00:00.000Z', to: '2026-11-27T10:01:00.000Z', counts: { glass: 2, paper: 1 } },
    { camera: 'belt2', from: '2026-11-27T10:00:00.000Z', to: '2026-11-27T10:01:00.000Z', counts: {} },
  ]);
  assert.deepEqual(counts.close(T0 + 120_000), [], 'no frames, no reports');
  assert.equal(counts.start, T0 + 120_000);
});
