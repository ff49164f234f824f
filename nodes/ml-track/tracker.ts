/**
 * Tracking and counting without Node-RED: links one camera's detections from frame to frame into
 * tracks, and counts each item once, when its track crosses a counting line in the set direction
 * or (mode "exit") when a confirmed track is lost.
 *
 * Matching: each track's box is moved by its velocity to where it should be in the new frame (an
 * item on a belt may move most of its width between frames at 1 frame/s), then tracks and
 * detections are paired by an optimal assignment (Hungarian) on the overlap (IoU) of the predicted
 * box, falling back to the distance of the centres in item sizes. A new track starts with the
 * camera's belt velocity (the mean of its tracks'), and is also tried where it was last seen.
 */
import type { Box, CountedItem, CountReport, Detection, TrackInfo } from '../lib/messages';

export type CountMode = 'line' | 'exit';
export type Direction = 'left-to-right' | 'right-to-left' | 'top-to-bottom' | 'bottom-to-top';
export const DIRECTIONS: readonly Direction[] = ['left-to-right', 'right-to-left', 'top-to-bottom', 'bottom-to-top'];

export interface TrackerOptions {
  mode: CountMode;
  /** The counting line, as a fraction 0..1 of the frame's width (left/right) or height (top/bottom). */
  line: number;
  direction: Direction;
  /** Frames a track may go undetected and still be continued. */
  maxMissed: number;
  /** Detections a track needs before it is counted, so that one-frame false positives are not. */
  minHits: number;
  /** The farthest a centre may be from where its track was expected, in item sizes. */
  maxDistance: number;
  /** Tracks kept per camera; a new item displaces the one seen longest ago. */
  maxTracks: number;
  /** Cameras remembered; the one silent longest is forgotten first. */
  maxCameras: number;
}

export const DEFAULT_TRACKER: TrackerOptions = {
  mode: 'line',
  line: 0.5,
  direction: 'left-to-right',
  maxMissed: 2,
  minHits: 2,
  maxDistance: 1.5,
  maxTracks: 200,
  maxCameras: 1000,
};

/** Only the highest scoring detections of a frame are tracked (ml-inference keeps at most 100). */
export const MAX_DETECTIONS_PER_FRAME = 200;

/** One frame's detections, with where and when it was taken. */
export interface TrackerFrame {
  camera: string;
  seq: number;
  capturedAt: string;
  /** Capture time in ms (velocities are per ms, so dropped frames do not fool the prediction). */
  at: number;
  /** The frame's size in pixels; needed in line mode. */
  width?: number;
  height?: number;
  detections: readonly Detection[];
}

export interface FrameUpdate {
  /** The track of each detection, in the order given (undefined: beyond MAX_DETECTIONS_PER_FRAME). */
  trackOf: (number | undefined)[];
  /** The camera's live tracks after this frame, by id. */
  tracks: TrackInfo[];
  /** Items counted in this frame, by track id. */
  counted: CountedItem[];
  /** The frame was taken before the camera's previous one and was not tracked. */
  stale: boolean;
}

interface Point { x: number; y: number }

interface Track {
  id: number;
  box: Box;
  /** Centre when last detected. */
  centre: Point;
  /** Pixels per ms; undefined until it was detected twice. */
  velocity?: Point;
  hits: number;
  missed: number;
  votes: Map<string, { sum: number; n: number }>;
  crossed: boolean;
  counted: boolean;
  seenAt: number;
  seenSeq: number;
  seenCapturedAt: string;
}

interface CameraState {
  tracks: Track[];
  nextId: number;
  lastAt: number;
  /** frame.seq of the camera's latest frame (0: not known). */
  lastSeq: number;
  /** The latest time between two of its frames (ms), for a frame after the clock was set back. */
  interval: number;
  /** Mean velocity of the camera's moving tracks: the belt's (pixels per ms). */
  belt?: Point;
}

const centreOf = (b: Box): Point => ({ x: b.x + b.w / 2, y: b.y + b.h / 2 });

export function boxIou(a: Box, b: Box): number {
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  return inter / (a.w * a.h + b.w * b.h - inter);
}

/** Overlap a predicted box needs to be matched by IoU; below it, the centre distance decides. */
const IOU_GATE = 0.1;
const FORBIDDEN = 1e9;

/** Cost of pairing a track's expected box with a detection: 1 - IoU, else 1 + distance in item sizes. */
function pairCost(expected: Box, detected: Box, maxDistance: number): number {
  const overlap = boxIou(expected, detected);
  if (overlap >= IOU_GATE) return 1 - overlap;
  const a = centreOf(expected);
  const b = centreOf(detected);
  const size = Math.max(expected.w, expected.h, detected.w, detected.h);
  const distance = Math.hypot(a.x - b.x, a.y - b.y) / size;
  return distance <= maxDistance ? 1 + distance : FORBIDDEN;
}

/**
 * Minimum-cost assignment of rows to columns (Hungarian method, O(n^2 m) for n rows <= m columns).
 * Returns each row's column, or -1 where only a FORBIDDEN pairing was left.
 */
export function assign(cost: readonly (readonly number[])[]): number[] {
  const rows = cost.length;
  const cols = rows ? cost[0].length : 0;
  if (!rows || !cols) return new Array(rows).fill(-1);
  if (rows > cols) {
    const transposed = Array.from({ length: cols }, (_, c) => cost.map((row) => row[c]));
    const byColumn = assign(transposed);
    const result = new Array(rows).fill(-1);
    byColumn.forEach((r, c) => { if (r >= 0) result[r] = c; });
    return result;
  }
  // 1-based potentials u (rows), v (columns); p[j]: the row matched to column j.
  const u = new Float64Array(rows + 1);
  const v = new Float64Array(cols + 1);
  const p = new Int32Array(cols + 1);
  const way = new Int32Array(cols + 1);
  for (let i = 1; i <= rows; i++) {
    p[0] = i;
    let j0 = 0;
    const minv = new Float64Array(cols + 1).fill(Infinity);
    const used = new Uint8Array(cols + 1);
    do {
      used[j0] = 1;
      const i0 = p[j0];
      let delta = Infinity;
      let j1 = 0;
      for (let j = 1; j <= cols; j++) {
        if (used[j]) continue;
        const cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
        if (cur < minv[j]) { minv[j] = cur; way[j] = j0; }
        if (minv[j] < delta) { delta = minv[j]; j1 = j; }
      }
      for (let j = 0; j <= cols; j++) {
        if (used[j]) { u[p[j]] += delta; v[j] -= delta; } else minv[j] -= delta;
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  const result = new Array(rows).fill(-1);
  for (let j = 1; j <= cols; j++) {
    if (p[j] && cost[p[j] - 1][j - 1] < FORBIDDEN) result[p[j] - 1] = j - 1;
  }
  return result;
}

/** The label with the most score over the track's detections, and that label's mean score. */
function vote(track: Track): { label: string; score: number } {
  let best = { label: '', sum: -1, n: 1 };
  for (const [label, { sum, n }] of track.votes) if (sum > best.sum) best = { label, sum, n };
  return { label: best.label, score: best.sum / best.n };
}

/** A smaller jump back in capture time is a late frame, not a clock set back. */
const MIN_CLOCK_STEP_MS = 1000;

export class Tracker {
  private readonly cameras = new Map<string, CameraState>();

  constructor(readonly options: TrackerOptions = DEFAULT_TRACKER) {}

  /** Links a frame's detections to the camera's tracks and counts what crossed or left. */
  update(frame: TrackerFrame): FrameUpdate {
    const { options } = this;
    const line = options.mode === 'line' ? this.linePixels(frame) : undefined;
    const state = this.camera(frame.camera, frame.at);
    if (frame.at < state.lastAt) {
      // A later frame of the camera taken "before" its previous one: the clock was set back (NTP
      // correcting a clock that ran fast). Its tracks move to the new clock, or nothing would be
      // tracked until the clock caught up. Without a later seq, or by less than a step of the clock
      // would be (a frame of a camera restarted with seq 1 overtaken by its last old one), it is a
      // frame that came late.
      const back = state.lastAt - frame.at;
      if (!(frame.seq > state.lastSeq && state.lastSeq > 0 && back > Math.max(2 * state.interval, MIN_CLOCK_STEP_MS))) {
        return { trackOf: frame.detections.map(() => undefined), tracks: this.describe(state), counted: [], stale: true };
      }
      const shift = frame.at - state.interval - state.lastAt;
      for (const track of state.tracks) track.seenAt += shift;
      state.lastAt += shift;
    }
    if (frame.at > state.lastAt) state.interval = frame.at - state.lastAt;
    state.lastAt = frame.at;
    state.lastSeq = frame.seq;

    const order = frame.detections.map((_, i) => i)
      .sort((a, b) => frame.detections[b].score - frame.detections[a].score)
      .slice(0, MAX_DETECTIONS_PER_FRAME);
    const boxes = order.map((i) => frame.detections[i].box);
    const cost = state.tracks.map((t) => boxes.map((box) => this.cost(t, state, frame.at, box)));
    const matchOf = assign(cost);

    const trackOf: (number | undefined)[] = frame.detections.map(() => undefined);
    const counted: CountedItem[] = [];
    const claimed = new Set<number>();
    const matched = new Set<Track>();
    state.tracks.forEach((track, t) => {
      const k = matchOf[t];
      if (k < 0) return;
      claimed.add(k);
      matched.add(track);
      const detection = frame.detections[order[k]];
      trackOf[order[k]] = track.id;
      this.follow(track, state, detection, frame);
      const previous = track.centre;
      track.centre = centreOf(detection.box);
      if (line !== undefined && !track.crossed && this.crosses(previous, track.centre, line)) track.crossed = true;
      if (track.crossed && !track.counted && track.hits >= options.minHits) counted.push(this.count(track, frame.camera));
    });

    // Tracks not seen this frame: kept for maxMissed frames; in exit mode a confirmed one that is gone counts.
    const kept: Track[] = [];
    for (const track of state.tracks) {
      if (matched.has(track)) { kept.push(track); continue; }
      track.missed++;
      if (track.missed <= options.maxMissed) { kept.push(track); continue; }
      if (options.mode === 'exit' && !track.counted && track.hits >= options.minHits) counted.push(this.count(track, frame.camera));
    }
    state.tracks = kept;

    order.forEach((i, k) => {
      if (claimed.has(k)) return;
      if (state.tracks.length >= options.maxTracks) {
        // Room for a new item: the track seen longest ago goes, unless every track is in this frame.
        const oldest = state.tracks.reduce((a, b) => (b.seenAt < a.seenAt ? b : a));
        if (matched.has(oldest) || oldest.seenAt === frame.at) return;
        state.tracks.splice(state.tracks.indexOf(oldest), 1);
      }
      const detection = frame.detections[i];
      const track: Track = {
        id: state.nextId++, box: detection.box, centre: centreOf(detection.box), hits: 0, missed: 0, votes: new Map(),
        crossed: false, counted: false, seenAt: frame.at, seenSeq: frame.seq, seenCapturedAt: frame.capturedAt,
      };
      this.follow(track, state, detection, frame);
      state.tracks.push(track);
      trackOf[i] = track.id;
    });
    counted.sort((a, b) => a.track - b.track);
    return { trackOf, tracks: this.describe(state), counted, stale: false };
  }

  /** Forgets every camera's tracks (counts already made stay made). */
  reset(): void {
    this.cameras.clear();
  }

  /** Forgets cameras with no frame since `before` (ms), so cameras that went away cost no memory. */
  forgetIdle(before: number): void {
    for (const [camera, state] of this.cameras) if (state.lastAt < before) this.cameras.delete(camera);
  }

  get cameraCount(): number {
    return this.cameras.size;
  }

  private camera(camera: string, at: number): CameraState {
    let state = this.cameras.get(camera);
    if (!state) {
      if (this.cameras.size >= this.options.maxCameras) {
        let silent: string | undefined;
        let silentAt = Infinity;
        for (const [id, s] of this.cameras) if (s.lastAt < silentAt) { silent = id; silentAt = s.lastAt; }
        this.cameras.delete(silent!);
      }
      state = { tracks: [], nextId: 1, lastAt: at, lastSeq: 0, interval: 0 };
      this.cameras.set(camera, state);
    }
    return state;
  }

  /** The line's position in pixels on the axis of the direction. */
  private linePixels(frame: TrackerFrame): number {
    const horizontal = this.options.direction === 'left-to-right' || this.options.direction === 'right-to-left';
    const size = horizontal ? frame.width : frame.height;
    if (!(typeof size === 'number' && size > 0)) {
      throw new Error(`the counting line is a fraction of the frame's ${horizontal ? 'width' : 'height'}, so the frame's size is needed, but it is ${size}`);
    }
    return this.options.line * size;
  }

  private crosses(from: Point, to: Point, line: number): boolean {
    switch (this.options.direction) {
      case 'left-to-right': return from.x < line && to.x >= line;
      case 'right-to-left': return from.x > line && to.x <= line;
      case 'top-to-bottom': return from.y < line && to.y >= line;
      default: return from.y > line && to.y <= line;
    }
  }

  /** The cheapest of where the track should be now: moved by its velocity, or for a new track by the belt's, or not moved. */
  private cost(track: Track, state: CameraState, at: number, detected: Box): number {
    const elapsed = at - track.seenAt;
    const moved = (v: Point): Box => ({ ...track.box, x: track.box.x + v.x * elapsed, y: track.box.y + v.y * elapsed });
    if (track.velocity) return pairCost(moved(track.velocity), detected, this.options.maxDistance);
    const still = pairCost(track.box, detected, this.options.maxDistance);
    return state.belt ? Math.min(still, pairCost(moved(state.belt), detected, this.options.maxDistance)) : still;
  }

  /** A detection joins its track: velocity, the belt's, votes, where and when it was seen. */
  private follow(track: Track, state: CameraState, detection: Detection, frame: TrackerFrame): void {
    if (track.hits > 0 && frame.at > track.seenAt) {
      const now = centreOf(detection.box);
      const elapsed = frame.at - track.seenAt;
      const measured = { x: (now.x - track.centre.x) / elapsed, y: (now.y - track.centre.y) / elapsed };
      // Smoothed: a box's jitter between frames should not throw the next prediction.
      track.velocity = track.velocity ? { x: (track.velocity.x + measured.x) / 2, y: (track.velocity.y + measured.y) / 2 } : measured;
      state.belt = state.belt ? { x: 0.8 * state.belt.x + 0.2 * measured.x, y: 0.8 * state.belt.y + 0.2 * measured.y } : measured;
    }
    track.box = { ...detection.box };
    track.hits++;
    track.missed = 0;
    const votes = track.votes.get(detection.label) ?? { sum: 0, n: 0 };
    votes.sum += detection.score;
    votes.n++;
    track.votes.set(detection.label, votes);
    track.seenAt = frame.at;
    track.seenSeq = frame.seq;
    track.seenCapturedAt = frame.capturedAt;
  }

  private count(track: Track, camera: string): CountedItem {
    track.counted = true;
    const { label, score } = vote(track);
    return {
      id: `${camera}-${track.seenAt}-${track.seenSeq}-t${track.id}`,
      camera, track: track.id, label, score, box: { ...track.box }, frameSeq: track.seenSeq, capturedAt: track.seenCapturedAt,
    };
  }

  private describe(state: CameraState): TrackInfo[] {
    return state.tracks.map((t) => ({ track: t.id, ...vote(t), box: { ...t.box }, hits: t.hits, missed: t.missed, counted: t.counted }));
  }
}

/**
 * Items counted per camera and label over a period. A camera that sent a frame in the period gets
 * a report even when nothing was counted: "0 items" is news, silence is not.
 */
export class PeriodCounts {
  private readonly cameras = new Map<string, Map<string, number>>();

  constructor(private from: number, private readonly maxCameras = DEFAULT_TRACKER.maxCameras) {}

  get start(): number {
    return this.from;
  }

  /** A frame of the camera arrived. */
  seen(camera: string): Map<string, number> {
    let counts = this.cameras.get(camera);
    if (!counts) {
      if (this.cameras.size >= this.maxCameras) return new Map(); // counted in the totals, not reported
      counts = new Map();
      this.cameras.set(camera, counts);
    }
    return counts;
  }

  add(camera: string, label: string): void {
    const counts = this.seen(camera);
    counts.set(label, (counts.get(label) ?? 0) + 1);
  }

  /** The period's reports up to `to` (ms), one per camera; the next period starts at `to`. */
  close(to: number): CountReport[] {
    const from = new Date(this.from).toISOString();
    const until = new Date(to).toISOString();
    const reports = [...this.cameras].map(([camera, counts]) => ({ camera, from, to: until, counts: Object.fromEntries(counts) }));
    this.cameras.clear();
    this.from = to;
    return reports;
  }
}
