/**
 * Bounded wait lists in front of a slow consumer (the model), one lane per camera, served round-robin
 * so that a camera that floods cannot starve the others. Within a lane, when it is full:
 *  - latest: the lane's oldest frame is dropped for the newer one (fresh frames win);
 *  - oldest: the new arrival is dropped (nothing reorders).
 * Another camera's frames are never dropped to make room. Drops are counted per lane.
 */
export type QueuePolicy = 'latest' | 'oldest';

export class FairQueue<T> {
  private readonly lanes = new Map<string, T[]>();
  /** Lanes with waiting items, in the order they will be served. */
  private readonly turn: string[] = [];
  private waiting = 0;
  private readonly drops = new Map<string, number>();

  constructor(readonly policy: QueuePolicy, readonly perLane: number, readonly maxWaiting = 10_000) {
    if (!Number.isInteger(perLane) || perLane < 1) throw new Error(`Expected a queue size per camera of at least 1 but received ${perLane}`);
  }

  get length(): number {
    return this.waiting;
  }

  /** Items waiting in this lane. */
  laneLength(lane: string): number {
    return this.lanes.get(lane)?.length ?? 0;
  }

  /** Frames of this lane dropped so far. */
  dropped(lane: string): number {
    return this.drops.get(lane) ?? 0;
  }

  get totalDropped(): number {
    let total = 0;
    for (const n of this.drops.values()) total += n;
    return total;
  }

  /** Lanes that have lost at least one frame. */
  get lanesWithDrops(): number {
    return this.drops.size;
  }

  /** Adds an item to its lane; returns the item dropped to stay within bounds, if any. */
  offer(lane: string, item: T): T | undefined {
    let items = this.lanes.get(lane);
    if (!items) {
      items = [];
      this.lanes.set(lane, items);
    }
    if (items.length >= this.perLane) {
      this.countDrop(lane);
      if (this.policy === 'oldest') return item;
      const dropped = items.shift();
      items.push(item);
      return dropped;
    }
    if (!items.length) this.turn.push(lane);
    items.push(item);
    this.waiting++;
    if (this.waiting > this.maxWaiting) {
      // Only with more lanes than anyone runs cameras (e.g. a key that changes every message):
      // the lane served next gives up its oldest item.
      const first = this.turn[0];
      this.countDrop(first);
      return this.takeFrom(first);
    }
    return undefined;
  }

  /** Up to `max` items, one per lane in turn, round-robin across calls. */
  take(max = 1): T[] {
    const out: T[] = [];
    while (out.length < max && this.turn.length) out.push(this.takeFrom(this.turn[0])!);
    return out;
  }

  drain(): T[] {
    return this.take(Infinity);
  }

  private takeFrom(lane: string): T | undefined {
    const items = this.lanes.get(lane)!;
    const item = items.shift();
    this.waiting--;
    this.turn.splice(this.turn.indexOf(lane), 1);
    if (items.length) this.turn.push(lane);
    else this.lanes.delete(lane);
    return item;
  }

  private countDrop(lane: string): void {
    if (this.drops.size >= this.maxWaiting && !this.drops.has(lane)) return; // counts stay bounded too
    this.drops.set(lane, (this.drops.get(lane) ?? 0) + 1);
  }
}

/** Frames per second over a sliding window of completion times. */
export class RateMeter {
  private readonly stamps: number[] = [];
  constructor(private readonly windowMs = 10_000) {}

  tick(now = Date.now()): void {
    this.stamps.push(now);
    this.trim(now);
  }

  rate(now = Date.now()): number {
    this.trim(now);
    if (this.stamps.length < 2) return 0;
    const span = (now - this.stamps[0]) / 1000;
    return span > 0 ? this.stamps.length / Math.max(span, 1) : 0;
  }

  private trim(now: number): void {
    while (this.stamps.length && now - this.stamps[0] > this.windowMs) this.stamps.shift();
  }
}
